"""The formats vLLM serves, on the demo model: each scheme quantized once, saved in llmq's own format
and as compressed-tensors (``QuantizedModel.save(..., format="compressed-tensors")``), both
reloaded (``llmq.load``: torchao / GPTQModel for the first, plain transformers' compressed-tensors
support for the second) and scored; fp8 (compressed-tensors only) against fp32.

Perplexity protocol: scripts/bench_quantize.py's (WikiText-2 raw test, 16 windows of 1024 tokens,
fp32 activations). Calibration: WikiText-2 *valid* (LLMQ_DATA_DIR mirror). Configs are the ones
compressed-tensors can hold (``Scheme.config(format="compressed-tensors")``: float embeddings,
int8-static's smoothing folded into the norms), used for both formats.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_vllm_formats.py
    python scripts/bench_vllm_formats.py --schemes fp8,int8-dynamic --update   # a subset

Writes eval/bench_vllm_formats.json (through ``_record``: command, date, machine) and .md, and
prints the table. Calibration is 16 x 512 tokens (AWQ 8 x 512: its search costs ~10 s per layer
per 4k tokens on a 2-core CPU); both formats come from the same quantization, so the budget does
not change what the comparison shows.
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

CT = "compressed-tensors"
SCHEMES = ("fp8", "int8-dynamic", "int8-static", "gptq-int4", "awq-int4")


def ppl(folder, seqlen: int, limit: int) -> float:
    import torch

    import llmq
    from llmq.eval.perplexity import perplexity

    m, tok = llmq.load(folder, device="cpu", dtype=torch.float32)
    v = perplexity(m, tok, "wikitext2", seqlen=seqlen, limit=limit)
    del m
    gc.collect()
    return v.value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--awq-n-samples", type=int, default=8, help="AWQ's search is slow on CPU (45 min at 128)")
    ap.add_argument("--group-size", type=int, default=64, help="SmolLM2's 576-wide layers need 64 (or 32)")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=16)
    add_json_arg(ap)
    ap.add_argument("--update", action="store_true", help="keep the other schemes' rows of <out>.json (each row "
                                                          "records its own protocol)")
    args = ap.parse_args(argv)
    args.out = str(Path(args.json).with_suffix(""))
    args.kept = json.loads(Path(args.json).read_text())["rows"] if args.update and Path(args.json).is_file() else []
    args.argv = " ".join(sys.argv[1:])
    os.environ.setdefault("LLMQ_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmq
    from llmq.eval.perplexity import perplexity
    from llmq.models import resolve_model
    from llmq.schemes import get_scheme

    src = resolve_model(None)
    base_dir = src.local_dir()
    tok = AutoTokenizer.from_pretrained(base_dir)
    base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base = perplexity(base_model, tok, "wikitext2", seqlen=args.seqlen, limit=args.limit)
    del base_model
    print(f"original (fp32): ppl {base.value:.4f} ({base.protocol})", flush=True)
    rows = []
    for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        b = get_scheme(scheme).backend_cls()
        kw = {}
        if b.needs_calibration:
            kw.update(calibration="wikitext2", seqlen=512,
                      n_samples=args.awq_n_samples if scheme == "awq-int4" else args.n_samples)
            if get_scheme(scheme).config().group_size != -1:
                kw["group_size"] = args.group_size
        # the config compressed-tensors can hold (the defaults that format sets), quantized once in the
        # plugin's own format and saved in both
        own = {**get_scheme(scheme).config_cls.format_defaults.get(CT, {}), **kw}
        own.pop("format", None)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            qm = llmq.quantize(None, scheme, device="cpu", **own)
            qtime = time.perf_counter() - t0
            row = {"scheme": scheme, "options": own, "time_s": round(qtime, 1), "protocol": base.protocol,
                   "original_ppl": base.value, "command": args.argv}
            if scheme != "fp8":
                native = qm.save(Path(tmp) / "native")
                row["native_format"] = json.loads((native / "llmq.json").read_text())["quantization_config"]["quant_method"]
                row["native_size_bytes"] = json.loads((native / "llmq.json").read_text())["size_bytes"]["after"]
            ct = qm.save(Path(tmp) / "ct", format=CT)
            meta = json.loads((ct / "llmq.json").read_text())
            row.update(ct_format=meta["quantization_config"]["format"], ct_size_bytes=meta["size_bytes"]["after"],
                       tensor_parallel_sizes=meta["serving"]["tensor_parallel_sizes"])
            del qm
            gc.collect()
            row["ct_ppl"] = ppl(ct, args.seqlen, args.limit)
            row["ct_vs_fp32_pct"] = 100 * (row["ct_ppl"] / base.value - 1)
            if scheme != "fp8":
                row["native_ppl"] = ppl(native, args.seqlen, args.limit)
                row["native_vs_fp32_pct"] = 100 * (row["native_ppl"] / base.value - 1)
                row["ct_vs_native_pct"] = 100 * (row["ct_ppl"] / row["native_ppl"] - 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args, base, rows, torch)
    print(write(args, base, rows, torch))
    return 0


def write(args, base, rows, torch) -> str:
    new = {r["scheme"]: r for r in rows}
    rows = [new.pop(r["scheme"], r) for r in args.kept] + list(new.values())
    md = ["| scheme | llmq's own format | its ppl | compressed-tensors layout | its ppl | CT vs own | vs fp32 | "
          "CT size (MB) |", "|---|---|---:|---|---:|---:|---:|---:|",
          ]
    for r in rows:
        own = (f"{r['native_format']} | {r['native_ppl']:.4f}" if "native_ppl" in r else "— | —")
        rel = f"{r['ct_vs_native_pct']:+.3f}%" if "ct_vs_native_pct" in r else "—"
        md.append(f"| {r['scheme']} | {own} | {r['ct_format']} | {r['ct_ppl']:.4f} | {rel} | "
                  f"{r['ct_vs_fp32_pct']:+.2f}% (fp32 {r['original_ppl']:.4f}, {r['protocol'].split('windows=')[1].split(',')[0]} windows) | "
                  f"{r['ct_size_bytes'] / 1e6:.1f} |")
    table = "\n".join(md)
    result = {"note": "each row records its protocol, the fp32 perplexity under it, and its command line",
              "calibration": {"source": "wikitext2 (valid split)", "n_samples": args.n_samples,
                              "awq_n_samples": args.awq_n_samples, "group_size": args.group_size},
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_record(args.json, result, quiet=True)
    out.with_suffix(".md").write_text(f"Protocol: WikiText-2 test, seqlen 1024, the windows each row names, fp32 "
                                      f"activations\n\n{table}\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
