"""Why torchao int8 decodes slowly on CPU: per-call time of the matmuls one decode token runs.

For SmolLM2's Linear shapes at one token (M=1): fp32 ``F.linear``, CPU ``torch._int_mm`` with int8 and
with uint8 activations (s8s8 / u8s8: torchao picks u8s8 on CPUs with AVX512-VNNI and no AMX), and
the ``lm_head`` as torchao int8 weight-only (float activations: the int8-static default) eager,
compiled, and compiled with Inductor freezing (what :mod:`llmq.fastpath` does). Weights stay in
cache in this loop, so it measures call cost, not memory bandwidth. One run; compare within it.

    python scripts/bench_int8_kernels.py            # table + eval/bench_int8_kernels.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

SHAPES = [(576, 1536), (1536, 576), (576, 49152)]  # q/up, down, lm_head (K, N)


def per_call_us(fn, n: int) -> float:
    for _ in range(5):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def torchao_int8_path() -> str:
    """Which int8 GEMM torchao's CPU int8 matmul uses here: u8s8 (uint8 activations, AVX512-VNNI without
    AMX) or s8s8 (``torchao.kernel.intmm._int_scaled_matmul_cpu``)."""
    from torchao.utils import _cpu_is_amx_tile_supported, _cpu_is_vnni_supported

    return "u8s8" if _cpu_is_vnni_supported() and not _cpu_is_amx_tile_supported() else "s8s8"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=200)
    add_json_arg(ap)
    a = ap.parse_args()
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, PerRow, quantize_

    from llmq.fastpath import patch_int_mm

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    patch_int_mm()
    rows = []
    with torch.no_grad():
        for k, n in SHAPES:
            w = torch.randint(-127, 127, (n, k), dtype=torch.int8)
            x8, xf, wf = torch.randint(-127, 127, (1, k), dtype=torch.int8), torch.randn(1, k), w.float()
            u8 = (x8.to(torch.int32) + 128).to(torch.uint8)  # torchao's u8s8 form (VNNI, no AMX)
            rows.append({"op": f"M=1, K={k}, N={n}",
                         "fp32 F.linear us": per_call_us(lambda: torch.nn.functional.linear(xf, wf), a.calls),
                         "int8 _int_mm us": per_call_us(lambda: torch._int_mm(x8, w.t()), a.calls),
                         "uint8 _int_mm us": per_call_us(lambda: torch._int_mm(u8, w.t()), a.calls)})
        head = torch.nn.Linear(576, 49152, bias=False)
        x = torch.randn(1, 1, 576)
        q = copy.deepcopy(head)
        quantize_(q, Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False))
        r = {"op": "lm_head 576x49152, int8 weight-only, fp32 activations",
             "fp32 F.linear us": per_call_us(lambda: head(x), a.calls // 4),
             "eager us": per_call_us(lambda: q(x), a.calls // 4)}
        import torch._inductor.config as ic

        # frozen first: a graph compiled earlier in the process is reused without freezing
        ic.freezing = True  # what llmq.fastpath sets
        frozen = torch.compile(copy.deepcopy(q))
        r["compiled, inductor.config.freezing us"] = per_call_us(lambda: frozen(x), a.calls // 4)
        ic.freezing = False
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(q))
        r["compiled us"] = per_call_us(lambda: compiled(x), a.calls // 4)
        torch._dynamo.reset()
        options = torch.compile(copy.deepcopy(q), options={"freezing": True})
        r["compiled, options={freezing} us"] = per_call_us(lambda: options(x), a.calls // 4)
        rows.append(r)
    for r in rows:
        print(" | ".join(f"{k}: {v:.0f}" if isinstance(v, float) else str(v) for k, v in r.items()))
    from llmq.hardware import cpu_name

    out = {"threads": a.threads, "torch": torch.__version__, "cpu": cpu_name(),
           "torchao_cpu_int8_path": torchao_int8_path(), "note": "per call, weights cache-resident; one run",
           "rows": rows}
    write_record(a.json, out)


if __name__ == "__main__":
    main()
