"""What a quantized folder holds, from the model's layout alone: the parameter profile of a model
(``ModelProfile``: its Linear weights, embeddings, KV-cache dimensions; no weights) and the
``SizeEstimate`` record every scheme plugin's ``estimate`` returns, with the pieces they share
(safetensors header sizes, which linears a scheme quantizes, the row-wise int8 layout of torchao
and bitsandbytes). It sits below the plugins so that they never import the advisor, which reads
their estimates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

SOURCES = {
    "headers": "safetensors headers of the local folder",
    "hub": "Hub safetensors metadata (no weights downloaded)",
    "gguf": "GGUF tensor table (no dequantization)",
    "config": "config.json on the meta device (no weights)",
    "given": "parameter count given by the caller",
}


@dataclass(frozen=True)
class Linear:
    """A Linear weight llmq may quantize. ``in_layers``: inside the decoder blocks (GPTQ/AWQ only
    quantize those; bitsandbytes and torchao quantize every Linear but ``lm_head``)."""

    name: str
    in_features: int
    out_features: int
    in_layers: bool = True

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass
class ModelProfile:
    """Everything the estimates and the advice need; no weights."""

    name: str
    parameters: int  # unique parameters, tied embeddings once
    source: str  # a key of SOURCES
    linears: list[Linear] = field(default_factory=list)
    embedding_params: int = 0  # input (and positional) embeddings
    lm_head_params: int = 0  # 0 when tied to the input embedding
    tied: bool = False
    layers: int = 0
    hidden: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    vocab: int = 0
    intermediate: int = 0
    checkpoint_dtype: str = "float32"  # the dtype of the original weights, for "size before"
    layout_source: str = "config (meta device)"
    notes: list[str] = field(default_factory=list)
    #: the transformers config it was read from (None for a bare parameter count or a .gguf), so the
    #: advisor can ask each scheme whether it can quantize this architecture
    config: Any = field(default=None, repr=False, compare=False)

    @property
    def linear_params(self) -> int:
        return sum(l.numel for l in self.linears)

    @property
    def other_params(self) -> int:
        """Norms, biases and anything else that is never quantized."""
        return max(0, self.parameters - self.linear_params - self.embedding_params - self.lm_head_params)

    @property
    def source_text(self) -> str:
        return SOURCES.get(self.source, self.source)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, config=None))
        d.pop("linears")
        d.pop("config")
        d.update(linear_count=len(self.linears), linear_params=self.linear_params, other_params=self.other_params,
                 source_text=self.source_text)
        return d


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


