"""What GPTQModel needs from the machine when it quantizes on CPU: a worker pool it can start, its
packing kernel compiled before any weight loads, and glibc returning GPTQ's freed buffers to the
system. Each is measured where it is defined."""

from __future__ import annotations

import os
import sys


def ensure_cpu_workers() -> None:
    """GPTQModel 7.7 sizes a 'model_loader:cpu' pool of 2 workers and dies on machines where its
    parent pool gets 1 (2-core machines) unless ``GPTQMODEL_CPU_WORKERS >= 2``."""
    cur = os.environ.get("GPTQMODEL_CPU_WORKERS")
    if cur is None or (cur.isdigit() and int(cur) < 2):
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, os.cpu_count() or 2))


def prebuild_pack_kernel() -> None:
    """GPTQModel compiles its CPU packing kernel (a C++ torch extension, cached under
    ``~/.cache/gptqmodel``) the first time it packs a GPTQ layer: on a fresh machine about 30 s and
    1.5 GiB for the compiler, on top of what the run holds by then (SmolLM2 demo's first run: peak
    2.24 GiB against 0.8 once cached; ``scripts/bench_scale.py --trace``). Built here, before any
    weight loads, the compiler never adds to a loaded model. A failed build is not fatal: GPTQModel
    packs in Python without it."""
    import time

    from gptqmodel.utils.cpp import default_torch_ops_build_root

    if any(default_torch_ops_build_root("pack_block_cpu").glob("*/*.so")):
        return
    from gptqmodel import extension

    print("llmq: compiling GPTQModel's CPU packing kernel (once per machine, about 30 s)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        extension.load(name="pack_block_cpu")
    except Exception as e:  # noqa: BLE001 - GPTQModel packs without it, slower
        print(f"llmq: GPTQModel's CPU packing kernel did not build ({e}); GPTQModel packs in Python", file=sys.stderr)
        return
    print(f"llmq: compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def fix_mmap_threshold(limit: int = 4 << 20) -> bool:
    """Fix glibc's mmap threshold at ``limit`` for the rest of the process (as
    ``MALLOC_MMAP_THRESHOLD_`` would), so blocks above it go back to the system when GPTQ frees them.
    glibc's default threshold rises (to 32 MiB) as large blocks are freed, and GPTQ's per-layer
    buffers then stay in its heaps: the 1B shape's peak grew layer by layer to 1.95 GiB, 1.38 GiB
    with the threshold fixed, and the unfixed peaks are what made the cost model miss at 7B
    (``scripts/bench_scale.py --sizes 1B --schemes gptq-int4 --trace DIR``; docs/large-models.md).
    A threshold the user set (environment or ``GLIBC_TUNABLES``) is kept. False where glibc's
    ``mallopt`` is not there (macOS, musl, Windows) or refused."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl's mallopt ignores the option
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(-3, limit))  # -3 = M_MMAP_THRESHOLD
