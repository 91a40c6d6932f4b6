"""A version-gated fix for torchao 0.18's int8 matmul on CPUs with neither AVX512-VNNI nor AMX.

torchao's int8 Linears (int8-dynamic, int8-static, qat-w8a8) multiply through ``torch._int_mm``.
PyTorch sends that to oneDNN only on CPUs with AVX512-VNNI; elsewhere (AVX2-only x86: many AMD EPYC
and consumer CPUs, most laptops before 2021) it runs a scalar reference loop, O(M*K*N) with a large
constant: 0.126 s per 512x576x576 GEMM, so one 512-token window of the 135M demo took 29 s against
0.3 s in fp32, and int8 was ~100x *slower* than the model it replaced.

The same product is exact in fp32 when split into chunks of 1024 along K: each int8*int8 term is at
most 2**14 in magnitude, so a 1024-term partial sum stays below 2**24, where fp32 represents every
integer; the partial sums are then added in int32, as ``_int_mm`` does. The result is bit-identical
(``tests/backends/test_torchao_patches.py``) and uses the CPU's fp32 GEMM (MKL/oneDNN). The fp32
copies of the operands cost a conversion per call, which loses to the reference loop for a few rows:
the patch takes over from ``MIN_ROWS`` rows (decode keeps ``_int_mm``). Measured on a 2-core AVX2 AMD
EPYC (``python scripts/bench_cpu_int_mm.py``, ``eval/bench_cpu_int_mm.json``).

Applied only for torchao 0.18.*, in eager mode (a ``torch.compile`` graph keeps torchao's own
decomposition: ``llmq.fastpath`` lowers it), on CPUs where torchao itself sees neither VNNI nor
AMX, and never with ``LLMQ_NO_TORCHAO_PATCHES=1``.
"""

from __future__ import annotations

import os
from typing import Any

from llmq.backends.base import package_version

PATCHED_VERSIONS = ("0.18.",)
#: fewest rows (tokens) for which the fp32 path beats the reference loop (512x576x1536: 1 row 0.3 ms
#: vs 1.1 ms, 8 rows 2.3 vs 2.1 ms, 32 rows 9.2 vs 1.1 ms)
MIN_ROWS = 8
#: K-chunk within which fp32 sums of int8 products are exact (1024 * 2**14 = 2**24)
CHUNK = 1024
_applied = False


def exact_int_mm(a: Any, b: Any) -> Any:
    """``torch._int_mm(a, b)`` (int8 ``[M, K] @ [K, N]`` -> int32), computed by fp32 GEMMs over
    K-chunks of ``CHUNK``: bit-identical, since every partial sum is an integer below 2**24."""
    import torch

    out = None
    for start in range(0, a.shape[1], CHUNK):
        part = (a[:, start:start + CHUNK].float() @ b[start:start + CHUNK].float()).to(torch.int32)
        out = part if out is None else out.add_(part)
    return out


def needed() -> bool:
    """Whether this process would run torchao's int8 GEMMs through PyTorch's reference loop."""
    v = package_version("torchao") or ""
    if not v.startswith(PATCHED_VERSIONS) or os.environ.get("LLMQ_NO_TORCHAO_PATCHES", "0") == "1":
        return False
    from torchao.utils import _cpu_is_amx_tile_supported, _cpu_is_vnni_supported

    return not (_cpu_is_vnni_supported() or _cpu_is_amx_tile_supported())


def patch_cpu_int_mm() -> bool:
    """Route torchao's CPU int8 GEMM (``torchao.kernel.intmm._int_scaled_matmul_cpu``, the s8s8
    branch) through :func:`exact_int_mm` where :func:`needed`; idempotent. Returns whether the patch
    is in place."""
    global _applied
    if _applied:
        return True
    if not needed():
        return False
    import torch
    import torchao.kernel.intmm as intmm

    original = intmm._int_scaled_matmul_cpu

    def _int_scaled_matmul_cpu(a, b, scales1):
        if torch.compiler.is_compiling() or a.shape[0] < MIN_ROWS or a.dtype != torch.int8:
            return original(a, b, scales1)
        return exact_int_mm(a, b).to(scales1.dtype) * scales1

    _int_scaled_matmul_cpu.__wrapped__ = original
    intmm._int_scaled_matmul_cpu = _int_scaled_matmul_cpu
    _applied = True
    return True


def unpatch() -> None:
    """Put torchao's own function back (``scripts/bench_cpu_int_mm.py`` times it); idempotent."""
    global _applied
    if not _applied:
        return
    import torchao.kernel.intmm as intmm

    intmm._int_scaled_matmul_cpu = getattr(intmm._int_scaled_matmul_cpu, "__wrapped__", intmm._int_scaled_matmul_cpu)
    _applied = False
