"""Decode speed on CPU: fp32 vs bitsandbytes (nf4, int8) vs torchao int8-dynamic.

The rule of thumb says "quantize to go faster"; on CPU bitsandbytes dequantizes every matmul and is
slower than plain fp32. This measures it on the offline demo model (SmolLM2-135M-Instruct), greedy
decoding of ``--tokens`` tokens after one warm-up run, and writes a JSON the advisor quotes.

    python scripts/bench_cpu_speed.py --tokens 32 --json scripts/bench_cpu_speed.json
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timed runs")
    ap.add_argument("--schemes", default="fp32,int8-dynamic,bnb-int8,bnb-nf4")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
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
        rows.append({"scheme": scheme, "tokens_per_s": round(tps, 2)})
        print(f"{scheme:14s} {tps:7.2f} tok/s", flush=True)
        del model
    base = next((r["tokens_per_s"] for r in rows if r["scheme"] == "fp32"), None)
    for r in rows:
        r["vs_fp32"] = round(r["tokens_per_s"] / base, 3) if base else None
    print(f"\n{'scheme':14s} {'tok/s':>8s} {'vs fp32':>8s}")
    for r in rows:
        print(f"{r['scheme']:14s} {r['tokens_per_s']:8.2f} {r['vs_fp32']:7.2f}x")
    result = {
        "command": f"python scripts/bench_cpu_speed.py --tokens {args.tokens} --repeats {args.repeats}",
        "model": "SmolLM2-135M-Instruct (offline demo, fp32)",
        "tokens": args.tokens,
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPU threads "
                   f"visible, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "results": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
