"""The one way llmq runs its torch outputs fast on CPU: a static KV cache and ``torch.compile``
(Inductor) of ``model.forward``, with torchao's recommended Inductor settings and the compiled
kernels cached on disk.

Why this path: eagerly, every torchao int8 matmul dispatches through a tensor subclass (int8-dynamic
decodes at 0.54x fp32 on the SmolLM2 demo, issue #11); Inductor fuses activation quantization, the
int8 GEMM and the rescale (2.5-3.9x fp32 prefill, ``python scripts/bench_int8.py --stages speed``,
``eval/bench_int8.json``), and with freezing decodes 1.4-1.8x fp32 on a 2-core AVX-512 CPU; a
one-token int8 GEMM costs about what fp32 ``F.linear`` does per call there, which caps decode
(``scripts/bench_int8_kernels.py``). The first call per input shape compiles (about two minutes
for SmolLM2 on 2 cores); Inductor's caches live under ``~/.cache/llmq/inductor-2``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


#: part of the default cache folder's name: bumped when llmq changes how graphs lower (Inductor's
#: cache key does not see llmq's lowering patch, so an older llmq's compiled graphs must not be reused)
CACHE_VERSION = 2


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmq" / f"inductor-{CACHE_VERSION}")


def is_torchao_quantized(model: Any) -> bool:
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(getattr(method, "value", method)) == "torchao"


def patch_int_mm() -> bool:
    """Work around pytorch/pytorch#195066 (open; fix in PR #194682, not in torch 2.14): on CPU,
    ``torch._int_mm`` silently returns uninitialised memory when an operand has a size-1 dimension
    with stride 0 (oneDNN rejects ``lda < K`` and the status is not checked). Inductor emits exactly
    that view for a single-token activation (``reinterpret_tensor(buf, (1, K), (0, 1))``), so every
    compiled torchao int8 model (int8-dynamic, int8-static) decoded garbage on CPU (without this
    patch ``tests/test_fastpath.py``'s compiled tiny model leaves the eager model's greedy tokens
    after the first). The fix is in Inductor's lowering of ``aten._int_mm``: an operand with a size-1
    dimension is copied into a fresh buffer with row-major strides (K int8 values per decode token;
    Inductor fuses the copy into the producer where it can), so both wrappers are safe: the Python
    one and the C++ one (``cpp_wrapper``), which calls ``at::_int_mm_out`` directly and which a
    Python-level wrapper of the extern kernel could not reach. Returns whether it was applied
    (idempotent)."""
    import torch
    import torch._inductor.kernel.mm  # noqa: F401  (registers the _int_mm lowering)
    from torch._inductor import ir, lowering
    from torch._inductor.virtualized import V

    aten = torch.ops.aten
    current = lowering.lowerings.get(aten._int_mm.default)
    if current is None:
        return False
    if getattr(current, "_llmq_patched", False):
        return True

    def _int_mm(mat1, mat2, *args, **kwargs):
        def safe(x):
            if any(V.graph.sizevars.statically_known_equals(s, 1) for s in x.get_size()):
                return ir.ExternKernel.copy_input(x)
            return x

        return current(safe(mat1), safe(mat2), *args, **kwargs)

    _int_mm._llmq_patched = True
    for name in aten._int_mm.overloads():
        op = getattr(aten._int_mm, name)
        if lowering.lowerings.get(op) is current:
            lowering.lowerings[op] = _int_mm
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
    # Inductor's C++ wrapper (``cpp_wrapper``) stays off: on the demo's int8-static decode it gained
    # nothing measurable on 2 cores and made the first compile ~120 s longer (issue #11's note);
    # patch_int_mm keeps it correct for users who turn it on.
    model.forward = torch.compile(model.forward, dynamic=dynamic, fullgraph=False)
    model._llmq_compiled = True
    return model
