"""Prefill and decode speed on CPU: fp32 vs bitsandbytes (nf4, int8) vs torchao int8-dynamic.

The rule of thumb says "quantize to go faster"; on CPU bitsandbytes dequantizes every matmul and is
slower than plain fp32. This measures it on the offline demo model (SmolLM2-135M-Instruct), greedy
decoding of ``--tokens`` tokens after one warm-up run (best of ``--repeats``), and one forward pass
over a ``--prefill``-token WikiText-2 prompt; prints a table and writes a JSON the advisor quotes.
All rows come from one run, so compare them as ratios.

    python scripts/bench_cpu_speed.py --tokens 32 --prefill 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

PROMPT = "The capital of France is Paris. The capital of Germany is"


def decode_speed(model, tok, tokens: int, repeats: int) -> float:
    import torch

    enc = tok(PROMPT, return_tensors="pt")
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
              pad_token_id=tok.pad_token_id or tok.eos_token_id)
    with torch.inference_mode():
        model.generate(**enc, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(**enc, **kw)
            dt = time.perf_counter() - t0
            best = max(best, (out.shape[1] - enc["input_ids"].shape[1]) / dt)
    return best


def prefill_speed(model, tok, n: int, repeats: int) -> float:
    import torch

    from llmq.eval.perplexity import load_text

    text, _ = load_text("wikitext2")
    ids = tok(text[:20 * n], return_tensors="pt").input_ids[:, :n]
    with torch.inference_mode():
        model(ids[:, :16])  # warm-up
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids)
            best = max(best, ids.shape[1] / (time.perf_counter() - t0))
    return best


def cpu_name() -> str:
    """The CPU model and whether it has native bf16 (bitsandbytes computes in bf16 by default)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                platform.machine())
    return f"{name} ({'with' if ' avx512_bf16' in info else 'without'} AVX512-BF16)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timed runs")
    ap.add_argument("--schemes", default="fp32,int8-dynamic,bnb-int8,bnb-nf4")
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens for the prefill timing")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parents[1] / "eval" / "bench_cpu_speed.json"))
    args = ap.parse_args()
    os.environ.setdefault("LLMQ_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmq
    from llmq.models import resolve_model

    src = resolve_model(None).local_dir()
    tok = AutoTokenizer.from_pretrained(src)
    rows = []
    for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        if scheme == "fp32":
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, device_map="cpu").eval()
        else:
            model = llmq.quantize(str(src), scheme, device="cpu").hf_model.eval()
        tps = decode_speed(model, tok, args.tokens, args.repeats)
        pps = prefill_speed(model, tok, args.prefill, args.repeats)
        rows.append({"scheme": scheme, "tokens_per_s": round(tps, 2), "prefill_tokens_per_s": round(pps, 1)})
        print(f"{scheme:14s} decode {tps:7.2f} tok/s, prefill {pps:8.1f} tok/s", flush=True)
        del model
    base = next((r["tokens_per_s"] for r in rows if r["scheme"] == "fp32"), None)
    pbase = next((r["prefill_tokens_per_s"] for r in rows if r["scheme"] == "fp32"), None)
    for r in rows:
        r["vs_fp32"] = round(r["tokens_per_s"] / base, 3) if base else None
        r["prefill_vs_fp32"] = round(r["prefill_tokens_per_s"] / pbase, 3) if pbase else None
    print(f"\n| scheme | decode tok/s | vs fp32 | prefill tok/s ({args.prefill}-token prompt) | vs fp32 |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scheme']} | {r['tokens_per_s']:.2f} | {r['vs_fp32'] or 0:.2f}x | {r['prefill_tokens_per_s']:.1f} | "
              f"{r['prefill_vs_fp32'] or 0:.2f}x |")
    result = {
        "command": f"python scripts/bench_cpu_speed.py --tokens {args.tokens} --prefill {args.prefill} --repeats {args.repeats}",
        "model": "SmolLM2-135M-Instruct (offline demo, fp32)",
        "tokens": args.tokens, "prefill_tokens": args.prefill,
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPU threads, torch {torch.__version__} eager",
        "results": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
