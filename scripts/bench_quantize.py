"""Quantize SmolLM2-135M (the offline demo model) with every scheme; report time, size, perplexity.

Perplexity protocol: WikiText-2 raw test, text joined with "\\n\\n", non-overlapping windows of
1024 tokens, first 16 windows (llmq.eval.perplexity, seqlen=1024, limit=16), computed with fp32
activations (weights as quantized; bnb-int8 in fp16).
Calibrated schemes use WikiText-2 *valid* tokens (LLMQ_DATA_DIR mirror), never the test text.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_quantize.py --json eval/bench_quantize.json
    python scripts/bench_quantize.py --schemes fp16,int8-dynamic --n-samples 32   # a quick subset
    python scripts/bench_quantize.py --schemes awq-int4 --n-samples 64 --update   # refresh rows in place

``--update`` replaces only the named schemes' rows in the ``--json`` record and keeps the others (the
original's perplexity is re-measured and must match the stored one, else the rows would not compare).

Writes the JSON record (``--json``, default eval/bench_quantize.json; ``--out STEM`` is the older
spelling, STEM.json) and the Markdown table beside it (same name, ``.md``), and prints the table.
Times are from this one run on this machine: compare them as ratios, not with other runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

RTN_FLOOR_NOTE = "asymmetric RTN int4 g64 scores 30.30 on this protocol (issue #2)"


def ppl_of(model, tok, seqlen: int, limit: int) -> dict:
    from llmq.eval.perplexity import perplexity

    return perplexity(model, tok, "wikitext2", seqlen=seqlen, limit=limit).to_dict()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default=None, help="comma-separated (default: every registered scheme)")
    ap.add_argument("--model", default=None, help="default: the offline demo SmolLM2-135M-Instruct")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64, help="SmolLM2's 576-wide layers need 64 (or 32)")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=16)
    add_json_arg(ap, aliases=("--out",))
    ap.add_argument("--update", action="store_true", help="replace the named schemes' rows in --json, keep the rest")
    args = ap.parse_args(argv)
    args.kept, args.argv, args.base_command = [], ["scripts/bench_quantize.py", *sys.argv[1:]], None
    os.environ.setdefault("LLMQ_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    import torch

    import llmq
    from llmq.models import resolve_model

    src = resolve_model(args.model)
    base_dir = src.local_dir()
    rows = []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base = ppl_of(model, tok, args.seqlen, args.limit)
    from llmq.models import folder_size

    base_size = folder_size(base_dir)
    rows.append({"scheme": "original (fp32)", "time_s": None, "size_bytes": base_size, "ppl": base["value"],
                 "ppl_delta_pct": 0.0, "protocol": base["protocol"]})
    print(f"original: ppl {base['value']:.2f} ({base['protocol']})", flush=True)
    if args.update and Path(args.json).with_suffix(".json").is_file():
        old = json.loads(Path(args.json).with_suffix(".json").read_text())
        if old["rows"] and abs(old["rows"][0]["ppl"] - base["value"]) > 1e-3 * base["value"]:
            sys.exit(f"--update: the original scores {base['value']:.4f} now but {old['rows'][0]['ppl']:.4f} in "
                     f"{Path(args.json).with_suffix('.json')}: rerun every scheme instead.")
        args.kept, args.base_command = old["rows"], old.get("command")
        args.argv = [*old.get("argv", [old.get("command", "")]), "+", *args.argv]
    from llmq.testing import rtn_fake_quantize_

    rtn = ppl_of(rtn_fake_quantize_(model, 4, args.group_size), tok, args.seqlen, args.limit)
    rows.append({"scheme": f"reference: naive RTN int4 asym g{args.group_size} (fake-quant)", "time_s": None,
                 "size_bytes": None, "ppl": rtn["value"], "ppl_delta_pct": 100 * (rtn["value"] / base["value"] - 1),
                 "protocol": rtn["protocol"]})
    print(f"rtn: ppl {rtn['value']:.2f}", flush=True)
    del model
    gc.collect()
    from llmq.schemes import SCHEMES, get_scheme

    # training schemes (qat-*) have their own benchmark with fp32 twins: scripts/bench_qat.py
    names = [s.strip() for s in args.schemes.split(",") if s.strip()] if args.schemes else [
        n for n in SCHEMES if not get_scheme(n).backend_cls().needs_training]
    for scheme in names:
        kw = {}
        if get_scheme(scheme).backend_cls().needs_calibration:
            kw = {"calibration": "wikitext2", "n_samples": args.n_samples, "seqlen": args.calib_seqlen}
            if getattr(get_scheme(scheme).config(), "group_size", -1) != -1:  # int8-static: per channel only
                kw["group_size"] = args.group_size
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            qm = llmq.quantize(args.model, scheme, device="cpu", **kw)
            qtime = time.perf_counter() - t0
            out = qm.save(Path(tmp) / scheme)
            del qm
            gc.collect()
            # fp32 activations on CPU (bf16 matmuls are emulated on CPUs without AVX512-BF16 and
            # ran ~10x slower here); bnb-int8 stays in fp16, as bitsandbytes wants for LLM.int8.
            m, t = llmq.load(out, device="cpu", dtype="auto" if scheme == "bnb-int8" else torch.float32)
            p = ppl_of(m, t, args.seqlen, args.limit)
            size = json.loads((out / "llmq.json").read_text())["size_bytes"]["after"]
            del m
            gc.collect()
        row = {"scheme": scheme, "time_s": round(qtime, 1), "size_bytes": size, "ppl": p["value"],
               "ppl_delta_pct": 100 * (p["value"] / base["value"] - 1), "options": kw, "protocol": p["protocol"]}
        rows.append(row)
        print(f"{scheme}: {qtime:.1f}s, {size / 1e6:.1f} MB, ppl {p['value']:.2f}", flush=True)
        write(args, src, base, base_size, rows)  # after every scheme: a long run keeps what it measured
    print(write(args, src, base, base_size, rows))
    print(f"wrote {Path(args.json).with_suffix('.json')} and {Path(args.json).with_suffix('.md')}")
    return 0


def write(args, src, base, base_size, rows) -> str:
    if args.kept:  # --update: the stored rows, with this run's schemes replaced in place or appended
        new = {r["scheme"]: r for r in rows}
        rows = [new.pop(r["scheme"], r) for r in args.kept] + list(new.values())
    md = ["| scheme | quantize time (s) | size on disk (MB) | size vs fp32 | WikiText-2 ppl | Δ ppl |",
          "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = "" if r["time_s"] is None else f"{r['time_s']:.1f}"
        size = "" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.1f}"
        ratio = "" if r["size_bytes"] is None else f"{r['size_bytes'] / base_size:.2f}"
        md.append(f"| {r['scheme']} | {t} | {size} | {ratio} | {r['ppl']:.2f} | {r['ppl_delta_pct']:+.1f}% |")
    table = "\n".join(md)
    result = {
        "argv": args.argv,
        "model": src.base_model_id, "source": str(src.path or src.name), "protocol": base["protocol"],
        "calibration": {"source": "wikitext2 (valid split, LLMQ_DATA_DIR mirror)", "n_samples": args.n_samples,
                        "seqlen": args.calib_seqlen, "group_size": args.group_size},
        "rows": rows, "note": RTN_FLOOR_NOTE,
    }
    out = Path(args.json)
    # --update keeps the first run's command (the rows it wrote); argv lists every run since
    write_record(out.with_suffix(".json"), result, command=args.base_command, quiet=True)
    out.with_suffix(".md").write_text(f"Protocol: {base['protocol']}\n\n{table}\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
