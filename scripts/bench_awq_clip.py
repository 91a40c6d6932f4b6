"""Time of AWQ's clip search on one SmolLM2-sized linear (1536 x 576, group 64): GPTQModel 7.7's own
``_compute_best_clip`` vs llmq's batched-matmul replacement (``llmq/backends/gptqmodel_patches.py``),
on the same random weights and inputs, in one run. Also checks both pick the same clip values.

    python scripts/bench_awq_clip.py --samples 64 --tokens 512

Prints a table and writes eval/bench_awq_clip.json.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-features", type=int, default=1536)
    ap.add_argument("--in-features", type=int, default=576)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=512)
    add_json_arg(ap)
    args = ap.parse_args()

    import torch
    from gptqmodel.looper.awq_processor import AWQProcessor

    from llmq.backends import gptqmodel_patches as P

    if not P.apply():
        raise SystemExit("the patches do not apply to this GPTQModel version")
    proc = types.SimpleNamespace(qcfg=types.SimpleNamespace(group_size=args.group_size, sym=False, bits=4))
    proc._pseudo_quantize_tensor_into = types.MethodType(AWQProcessor._pseudo_quantize_tensor_into, proc)
    torch.manual_seed(0)
    w = torch.randn(args.out_features, args.in_features) * 0.05
    x = torch.randn(args.samples, args.tokens, args.in_features)
    times, clips = {}, {}
    for name, fn in (("gptqmodel", P.original_compute_best_clip), ("llmq", P.fast_compute_best_clip)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            clips[name] = fn(proc, w, x)
        times[name] = time.perf_counter() - t0
    same = bool(torch.allclose(clips["gptqmodel"], clips["llmq"], rtol=1e-6, atol=0))
    row = {"linear": f"{args.out_features}x{args.in_features}", "group_size": args.group_size,
           "inputs": f"{args.samples}x{args.tokens}", "gptqmodel_s": round(times["gptqmodel"], 2),
           "llmq_s": round(times["llmq"], 2), "speedup": round(times["gptqmodel"] / times["llmq"], 1),
           "same_clip_values": same}
    print("| linear | group | inputs | GPTQModel (s) | llmq (s) | speed-up | same clips |\n|---|---|---|---:|---:|---:|---|")
    print(f"| {row['linear']} | {row['group_size']} | {row['inputs']} | {row['gptqmodel_s']} | {row['llmq_s']} | "
          f"{row['speedup']}x | {same} |")
    write_record(args.json, {"threads": torch.get_num_threads(), **row})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
