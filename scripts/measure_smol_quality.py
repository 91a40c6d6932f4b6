"""Size and perplexity change of each fast scheme on SmolLM2-135M: the measured column beside the
rule of thumb in the README's "Which scheme?" section (``llmq/advisor/measured.py``).

    python scripts/measure_smol_quality.py --limit 40 --seqlen 512

Uses the evaluator (``llmq.eval.compare``) and reads the perplexity change through the gate, as
``--scheme auto`` does. Calibrated schemes (GPTQ/AWQ) take minutes each on CPU: opt in with
``--schemes``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="fp16,bf16,int8-dynamic,bnb-int8,bnb-nf4,bnb-fp4")
    ap.add_argument("--limit", type=int, default=40, help="perplexity windows")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()

    import llmq
    from llmq.advisor.auto import check_summary
    from llmq.eval import compare
    from llmq.eval.gate import check_gate
    from llmq.models import folder_size, resolve_model

    src = resolve_model(None).local_dir()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
            t0 = time.perf_counter()
            path = llmq.quantize(str(src), scheme, device="cpu").save(Path(tmp) / scheme)
            report = compare(str(src), str(path), ppl="wikitext2", tasks=None, limit=args.limit,
                             seqlen=args.seqlen, out_dir=str(Path(tmp) / f"{scheme}.eval"))
            gate = check_gate(report, max_ppl_increase="1000%", max_accuracy_loss=None, max_kld=None)
            checks, ppl_change, _ = check_summary(gate.checks)
            rows[scheme] = {"size_bytes": folder_size(path), "ppl_change": ppl_change, "checks": checks,
                            "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"{scheme:14s} {rows[scheme]['size_bytes'] / 1e6:8.1f} MB  ppl change "
                  f"{ppl_change * 100:+.2f}%", flush=True)
    out = {"command": f"python scripts/measure_smol_quality.py --limit {args.limit} --seqlen {args.seqlen}",
           "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
