"""How fast this CPU multiplies in each dtype llmq calibrates in: ``torch.nn.functional.linear`` of
512 tokens through a layer's projections (the shapes GPTQ's calibration forwards run), fp32, bf16
and fp16, median of ``--repeats``. Prints a table and writes ``eval/bench_cpu_dtypes.json``.

Why: a CPU without native bf16 (no AVX512-BF16, no AMX: most laptops, and some of this project's
VMs) runs a bf16 matmul several times slower than fp32, and GPTQ's calibration forwards run in the
checkpoint's dtype: the demo's gptq-int4 took 571 s on such a VM against 106 s on one with
AVX512-BF16 (``scripts/bench_scale.py --sizes demo --schemes gptq-int4``). Times quantizing
projects (``llmq/scale_costs.json``) come from the CPU that measured most rows; read them as a
lower bound on a CPU this table shows slow in bf16.

    python scripts/bench_cpu_dtypes.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

#: (name, in_features, out_features): the demo's (SmolLM2-135M) and Llama-2-7B's widest projections
SHAPES = (("135M q_proj", 576, 576), ("135M up_proj", 576, 1536), ("7B q_proj", 4096, 4096),
          ("7B up_proj", 4096, 11008))
DTYPES = ("float32", "bfloat16", "float16")


def time_linear(tokens: int, n_in: int, n_out: int, dtype: str, repeats: int) -> float:
    """Median seconds of one ``linear`` of ``tokens`` rows, after one warm-up call."""
    import torch

    dt = getattr(torch, dtype)
    x, w = torch.randn(tokens, n_in, dtype=dt), torch.randn(n_out, n_in, dtype=dt)
    torch.nn.functional.linear(x, w)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(tokens: int = 512, repeats: int = 5, shapes=SHAPES) -> list[dict]:
    rows = []
    for name, n_in, n_out in shapes:
        ms = {d: 1e3 * time_linear(tokens, n_in, n_out, d, repeats) for d in DTYPES}
        rows.append({"shape": name, "in": n_in, "out": n_out, "tokens": tokens,
                     **{f"{d}_ms": round(v, 3) for d, v in ms.items()},
                     **{f"{d}_vs_fp32": round(v / ms["float32"], 2) for d, v in ms.items() if d != "float32"}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    add_json_arg(ap)
    a = ap.parse_args(argv)
    import torch

    from llmq.hardware import cpu_name

    rows = measure(a.tokens, a.repeats, SHAPES)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, {a.tokens} tokens")
    print(f"{'shape':14} {'fp32 ms':>8} {'bf16 ms':>8} {'fp16 ms':>8} {'bf16/fp32':>9} {'fp16/fp32':>9}")
    for r in rows:
        print(f"{r['shape']:14} {r['float32_ms']:>8.1f} {r['bfloat16_ms']:>8.1f} {r['float16_ms']:>8.1f} "
              f"{r['bfloat16_vs_fp32']:>9.2f} {r['float16_vs_fp32']:>9.2f}")
    write_record(a.json, {"cpu": cpu_name(), "threads": torch.get_num_threads(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
