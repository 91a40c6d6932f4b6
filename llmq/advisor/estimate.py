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

from dataclasses import asdict, dataclass, field
from typing import Any

from llmq.advisor.params import Linear, ModelProfile

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: safetensors header bytes per tensor (name + dtype + shape + offsets JSON; torchao adds metadata)
HEADER_PER_TENSOR = {"default": 115, "torchao": 300}


@dataclass
class SizeEstimate:
    scheme: str
    label: str  # fp32, fp16, bf16, int8, nf4, fp4, int4, int3
    bytes: int
    quantized_params: int  # weights stored in low precision
    kept_params: int  # weights stored at kept_dtype
    kept_dtype: str
    bits_per_weight: float | None  # of the quantized weights, scales/zeros included
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def gb(self) -> float:
        return self.bytes / 1e9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def selected_linears(profile: ModelProfile, layers_only: bool, skip: tuple[str, ...]) -> tuple[list[Linear], int]:
    """(quantized linears, params of the linears kept in full precision)."""
    from llmq.models import excluded_modules

    cand = [l for l in profile.linears if l.in_layers or not layers_only]
    if skip:
        keep = set(excluded_modules(None, [l.name for l in cand], skip))
        cand = [l for l in cand if l.name not in keep]
    q = sum(l.numel for l in cand)
    return cand, profile.linear_params - q


def kept_params(profile: ModelProfile, q_params: int) -> int:
    return profile.parameters - q_params


def header_bytes(n_tensors: int, kind: str = "default") -> int:
    return 8 + n_tensors * HEADER_PER_TENSOR[kind]


def base_tensors(profile: ModelProfile) -> int:
    """Tensors that are not Linear weights: norms (two per layer + final), embeddings, lm_head."""
    return 2 * profile.layers + 1 + 1 + (0 if profile.tied else 1)


def int8_rowwise(profile: ModelProfile, scheme: str, kept_dtype: str, *, zero_point: bool, skip=()) -> SizeEstimate:
    """int8 weights with one fp32 scale per output row: torchao adds an int8 zero point per row
    (``zero_point``), bitsandbytes a 1-byte ``weight_format`` per layer; the rest at ``kept_dtype``."""
    lins, _ = selected_linears(profile, False, skip)
    q = sum(l.numel for l in lins)
    rows = sum(l.out_features for l in lins)
    scales = rows * 4 + (rows if zero_point else 0) + (0 if zero_point else len(lins))  # bnb: weight_format byte
    kept = kept_params(profile, q) * BYTES[kept_dtype]
    n = base_tensors(profile) + len(profile.linears) + 2 * len(lins)
    hdr = header_bytes(n, "torchao" if zero_point else "default")
    return SizeEstimate(scheme, "int8", q + scales + kept + hdr, q, kept_params(profile, q), kept_dtype,
                        8 * (q + scales) / q if q else None,
                        {"int8 weights": q, "scales/zeros": scales, f"kept ({kept_dtype})": kept, "header": hdr})


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
