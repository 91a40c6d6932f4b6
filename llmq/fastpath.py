"""The one way llmq runs its torch outputs fast on CPU: a static KV cache and ``torch.compile``
(Inductor) of ``model.forward``, with torchao's recommended Inductor settings and the compiled
kernels cached on disk.

Why this path: eagerly, every torchao int8 matmul dispatches through a tensor subclass (int8-dynamic
decodes at 0.54x fp32 on the SmolLM2 demo, issue #11); Inductor fuses activation quantization, the
int8 GEMM and the rescale (2.5-3.9x fp32 prefill, ``python scripts/bench_int8.py --stages speed``,
``eval/bench_int8.json``), and with freezing decodes 1.4-1.8x fp32 on a 2-core AVX-512 CPU; a
one-token int8 GEMM costs about what fp32 ``F.linear`` does per call there, which caps decode
(``scripts/bench_int8_kernels.py``). The first call per input shape compiles (about two minutes
for SmolLM2 on 2 cores); Inductor's caches live under ``~/.cache/llmq/inductor``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmq" / "inductor")


def is_torchao_quantized(model: Any) -> bool:
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(getattr(method, "value", method)) == "torchao"


def _canonical_strides(t: Any) -> Any:
    """``t`` (2-D) with a stride-0 size-1 dimension restrided to the row-/column-major value it
    would have had: same storage, same elements, no copy."""
    if t.dim() != 2 or 0 not in t.stride():
        return t
    (r, c), (s0, s1) = t.shape, t.stride()
    if r == 1 and s0 == 0:
        s0 = max(c * s1, 1)
    if c == 1 and s1 == 0:
        s1 = max(r * s0, 1)
    return t.as_strided((r, c), (s0, s1), t.storage_offset())


def patch_int_mm() -> bool:
    """Work around pytorch/pytorch#195066 (open; fix in PR #194682, not in torch 2.14): on CPU,
    ``torch._int_mm`` silently returns uninitialised memory when an operand has a size-1 dimension
    with stride 0 (oneDNN rejects ``lda < K`` and the status is not checked). Inductor emits exactly
    that view for a single-token activation, so every compiled torchao int8 model (int8-dynamic,
    int8-static) decoded garbage on CPU (without this wrapper ``tests/test_fastpath.py``'s compiled
    tiny model leaves the eager model's greedy tokens after the first). The wrapper restrides such
    operands (no copy) before Inductor's extern ``_int_mm`` call. Returns whether it was applied
    (idempotent)."""
    import torch
    import torch._inductor.kernel.mm  # noqa: F401  (registers extern_kernels._int_mm)
    from torch._inductor.select_algorithm import extern_kernels

    current = getattr(extern_kernels, "_int_mm", None)
    if current is None:
        return False
    if getattr(current, "_llmq_patched", False):
        return True
    def _int_mm(a, b, *, out=None):
        a, b = _canonical_strides(a), _canonical_strides(b)
        return current(a, b) if out is None else current(a, b, out=out)

    _int_mm._llmq_patched = True
    extern_kernels._int_mm = _int_mm
    return True


def compile_for_cpu(model: Any, *, dynamic: bool = False, freeze: bool = True) -> Any:
    """Compile ``model.forward`` in place for CPU inference and make ``generate`` use a static
    cache (one compiled graph per (batch, length) shape instead of one per step). Returns the
    model. Safe to call twice."""
    import torch

    if getattr(model, "_llmq_compiled", False):
        return model
    os.environ.setdefault(CACHE_ENV, str(cache_dir()))
    import torch._inductor.config as ic

    ic.fx_graph_cache = True
    patch_int_mm()
    if is_torchao_quantized(model):
        from torchao.quantization.utils import recommended_inductor_config_setter

        recommended_inductor_config_setter()
    gc = model.generation_config
    gc.cache_implementation = "static"
    gc.disable_compile = True  # our compiled forward serves prefill and decode; no second wrapper
    if freeze and model.device.type == "cpu":
        # Freezing folds the weights into the graph as constants, which lets Inductor lower torchao's
        # int8 weight-only matmul (the int8-static lm_head with float activations) to a fast kernel:
        # 47 -> 3 ms per call for SmolLM2's 576x49152 head (scripts/bench_int8_kernels.py). Set
        # process-wide like torchao's recommended settings: torch.compile(options={"freezing": True})
        # compiled without it (same script). It only applies to graphs compiled without autograd.
        ic.freezing = True
    model.forward = torch.compile(model.forward, dynamic=dynamic, fullgraph=False)
    model._llmq_compiled = True
    return model
