"""Bytes on disk (and in memory) per scheme, from the layout alone.

Each scheme's formula is its plugin's ``estimate`` (``llmq/backends/*.py``), mirroring the tensors
that plugin writes (checked against real llmq folders of SmolLM2-135M in
``tests/advisor/test_estimate.py``). This module holds what they share: the ``SizeEstimate``
record, safetensors header sizes, which linears a scheme quantizes, the row-wise int8 layout
(torchao and bitsandbytes), and the run-time memory model.

``lm_head`` and the embeddings stay unquantized (tied: stored once) except in the torchao int8
schemes (int8-dynamic, int8-static: int8 per row, ``quantize_embeddings``). GPTQ/AWQ only quantize
Linears inside the decoder blocks; bitsandbytes and torchao quantize every other Linear.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmq.sizing import BYTES, ModelProfile, SizeEstimate


def estimate_scheme(profile: ModelProfile, scheme: str, *, device: str = "cuda", **overrides: Any) -> SizeEstimate:
    """The size llmq would write for ``scheme`` with the scheme's defaults (or ``overrides``) when
    quantized on ``device``: the scheme's plugin's ``estimate``."""
    from llmq.schemes import get_scheme

    sch = get_scheme(scheme)
    cfg = sch.config(**{k: v for k, v in overrides.items() if v is not None})
    return sch.backend_cls().estimate(profile, sch, cfg, device)


def original(profile: ModelProfile) -> SizeEstimate:
    """The unquantized checkpoint: fp32 (what llmq loads a GGUF or fp32 folder as)."""
    from llmq.backends.cast import cast_size

    return cast_size(profile, "fp32", "float32", "fp32")


def all_estimates(profile: ModelProfile, device: str = "cuda") -> list[SizeEstimate]:
    """fp32 baseline, then every scheme in the registry, each at its defaults."""
    from llmq.schemes import SCHEMES

    return [original(profile)] + [estimate_scheme(profile, s, device=device) for s in SCHEMES]


# -- memory at run time -------------------------------------------------------------------------
#: compute dtype of activations / KV cache per scheme (the config's dtype, or 16-bit for GPTQ/AWQ)
def compute_dtype(scheme: str) -> str:
    from llmq.schemes import get_scheme

    if scheme == "fp32":
        return "float32"
    cfg = get_scheme(scheme).config()
    return getattr(cfg, "compute_dtype", None) or getattr(cfg, "dtype", None) or "float16"


RUNTIME_OVERHEAD_GB = {"cuda": 0.5, "cpu": 0.3}  # CUDA context + allocator slack / torch itself (assumed)


@dataclass
class MemoryEstimate:
    weights: int
    kv_cache: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def memory(profile: ModelProfile, size: SizeEstimate, *, context: int, batch_size: int = 1,
           device: str = "cuda") -> MemoryEstimate:
    """Peak memory to run ``size`` at ``context`` tokens: the weights as stored, the KV cache
    (2 · layers · kv_heads · head_dim · context · batch at the compute dtype), the prefill
    activations (residual + MLP intermediates for every token, and full-context fp32 logits as
    perplexity evaluation needs), plus a fixed runtime overhead."""
    b = BYTES.get(compute_dtype(size.scheme), 2)
    kv = 2 * profile.layers * profile.kv_heads * profile.head_dim * context * batch_size * b
    tokens = context * batch_size
    act = tokens * (4 * profile.hidden + 2 * profile.intermediate) * b + tokens * profile.vocab * 4
    over = int(RUNTIME_OVERHEAD_GB["cuda" if device == "cuda" else "cpu"] * 1024**3)
    return MemoryEstimate(size.bytes, kv, act, over)
