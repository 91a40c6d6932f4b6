"""The one way llmq runs its torch outputs fast on CPU: a static KV cache and ``torch.compile``
(Inductor) of ``model.forward``, with torchao's recommended Inductor settings and the compiled
kernels cached on disk.

Why this path: measured on the SmolLM2 demo (issue #11), torchao int8 runs *slower* than fp32
eagerly (0.54x decode) because every matmul dispatches through a tensor subclass, while Inductor
fuses activation quantization, the int8 GEMM and the rescale into a few kernels (2.18x decode for
int8-dynamic). The first call per input shape compiles (tens of seconds to minutes on a small
CPU); Inductor's FX-graph cache under ``~/.cache/llmq/inductor`` makes later processes start fast.
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


def compile_for_cpu(model: Any, *, dynamic: bool = False) -> Any:
    """Compile ``model.forward`` in place for CPU inference and make ``generate`` use a static
    cache (one compiled graph per (batch, length) shape instead of one per step). Returns the
    model. Safe to call twice."""
    import torch

    if getattr(model, "_llmq_compiled", False):
        return model
    os.environ.setdefault(CACHE_ENV, str(cache_dir()))
    import torch._inductor.config as ic

    ic.fx_graph_cache = True
    if is_torchao_quantized(model):
        from torchao.quantization.utils import recommended_inductor_config_setter

        recommended_inductor_config_setter()
    gc = model.generation_config
    gc.cache_implementation = "static"
    gc.disable_compile = True  # our compiled forward serves prefill and decode; no second wrapper
    model.forward = torch.compile(model.forward, dynamic=dynamic, fullgraph=False)
    model._llmq_compiled = True
    return model
