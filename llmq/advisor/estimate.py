"""Bytes on disk (and in memory) per scheme, from the layout alone.

Each formula mirrors the tensors the backend actually writes (checked against real llmq folders
of SmolLM2-135M in ``tests/advisor/test_estimate.py``):

* fp16/bf16: every parameter at 2 bytes.
* int8-dynamic (torchao): ``_weight_qdata`` int8 + per-row fp32 ``_weight_scale`` + int8
  ``_weight_zero_point``; everything else at the config's ``dtype`` (float32 by default).
* bnb-int8: int8 ``weight`` + fp32 per-row ``SCB`` + a 1-byte ``weight_format``; rest fp16.
* bnb-nf4/fp4: 4-bit codes packed two per byte + one absmax per 64-block; with double quant the
  absmax is 8-bit with one fp32 absmax per 256 blocks, plus the 256-entry fp32 nested code book,
  the 16-entry fp32 code book and a ~170-byte JSON quant state per layer; rest bf16.
* GPTQ: ``qweight`` int32 (bits/8 bytes per weight), per group fp16 ``scales`` and packed int32
  ``qzeros``, and an int32 ``g_idx`` per input feature; rest 16-bit.
* AWQ (GEMM): as GPTQ without ``g_idx``.

``lm_head`` and the embeddings are never quantized by llmq (tied: stored once). GPTQ/AWQ only
quantize Linears inside the decoder blocks; bitsandbytes and torchao quantize every other Linear.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from llmq.advisor.params import Linear, ModelProfile

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: safetensors header bytes per tensor (name + dtype + shape + offsets JSON; torchao adds metadata)
HEADER_PER_TENSOR = {"default": 115, "torchao": 300}
BNB4_STATE_JSON = 170  # quant_state.bitsandbytes__nf4 (measured: 168-171 bytes)


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


def _selected(profile: ModelProfile, layers_only: bool, skip: tuple[str, ...]) -> tuple[list[Linear], int]:
    """(quantized linears, params of the linears kept in full precision)."""
    from llmq.models import excluded_modules

    cand = [l for l in profile.linears if l.in_layers or not layers_only]
    if skip:
        keep = set(excluded_modules(None, [l.name for l in cand], skip))
        cand = [l for l in cand if l.name not in keep]
    q = sum(l.numel for l in cand)
    return cand, profile.linear_params - q


def _kept(profile: ModelProfile, q_params: int) -> int:
    return profile.parameters - q_params


def _header(n_tensors: int, kind: str = "default") -> int:
    return 8 + n_tensors * HEADER_PER_TENSOR[kind]


def _base_tensors(profile: ModelProfile) -> int:
    """Tensors that are not Linear weights: norms (two per layer + final), embeddings, lm_head."""
    return 2 * profile.layers + 1 + 1 + (0 if profile.tied else 1)


def cast(profile: ModelProfile, scheme: str = "fp16", dtype: str = "float16", label: str | None = None) -> SizeEstimate:
    b = BYTES[dtype]
    n = len(profile.linears) + _base_tensors(profile)
    data = profile.parameters * b
    return SizeEstimate(scheme, label or {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype],
                        data + _header(n), 0, profile.parameters, dtype, None,
                        {"weights": data, "header": _header(n)})


def int8_rowwise(profile: ModelProfile, scheme: str, kept_dtype: str, *, zero_point: bool, skip=()) -> SizeEstimate:
    lins, _ = _selected(profile, False, skip)
    q = sum(l.numel for l in lins)
    rows = sum(l.out_features for l in lins)
    scales = rows * 4 + (rows if zero_point else 0) + (0 if zero_point else len(lins))  # bnb: weight_format byte
    kept = _kept(profile, q) * BYTES[kept_dtype]
    n = _base_tensors(profile) + len(profile.linears) + 2 * len(lins)
    hdr = _header(n, "torchao" if zero_point else "default")
    return SizeEstimate(scheme, "int8", q + scales + kept + hdr, q, _kept(profile, q), kept_dtype,
                        8 * (q + scales) / q if q else None,
                        {"int8 weights": q, "scales/zeros": scales, f"kept ({kept_dtype})": kept, "header": hdr})


def bnb4(profile: ModelProfile, scheme: str, label: str, *, double_quant: bool = True, kept_dtype: str = "bfloat16",
         blocksize: int = 64, skip=()) -> SizeEstimate:
    lins, _ = _selected(profile, False, skip)
    q = sum(l.numel for l in lins)
    codes = sum(math.ceil(l.numel / 2) for l in lins)
    blocks = [math.ceil(l.numel / blocksize) for l in lins]
    if double_quant:
        scales = sum(b + 4 * math.ceil(b / 256) + 256 * 4 for b in blocks)
        per_layer_tensors = 6
    else:
        scales = sum(4 * b for b in blocks)
        per_layer_tensors = 4
    scales += len(lins) * (16 * 4 + BNB4_STATE_JSON)
    kept = _kept(profile, q) * BYTES[kept_dtype]
    n = _base_tensors(profile) + len(profile.linears) + (per_layer_tensors - 1) * len(lins)
    hdr = _header(n)
    return SizeEstimate(scheme, label, codes + scales + kept + hdr, q, _kept(profile, q), kept_dtype,
                        8 * (codes + scales) / q if q else None,
                        {"4-bit codes": codes, "absmax/code books": scales, f"kept ({kept_dtype})": kept, "header": hdr})


def grouped(profile: ModelProfile, scheme: str, bits: int, group_size: int, *, g_idx: bool,
            kept_dtype: str = "bfloat16", skip=()) -> SizeEstimate:
    """GPTQ (``g_idx=True``) and AWQ GEMM packing: int32 words of ``32/bits`` codes."""
    lins, _ = _selected(profile, True, skip)
    q = sum(l.numel for l in lins)
    packed = scales = zeros = gidx = 0
    for l in lins:
        g = l.in_features if group_size in (-1, None) else group_size
        groups = math.ceil(l.in_features / g)
        packed += math.ceil(l.in_features * bits / 32) * l.out_features * 4
        scales += groups * l.out_features * 2
        zeros += groups * math.ceil(l.out_features * bits / 32) * 4
        gidx += l.in_features * 4 if g_idx else 0
    kept = _kept(profile, q) * BYTES[kept_dtype]
    n = _base_tensors(profile) + (len(profile.linears) - len(lins)) + (4 if g_idx else 3) * len(lins)
    hdr = _header(n)
    over = scales + zeros + gidx
    return SizeEstimate(scheme, f"int{bits}", packed + over + kept + hdr, q, _kept(profile, q), kept_dtype,
                        8 * (packed + over) / q if q else None,
                        {f"int{bits} codes": packed, "scales": scales, "zeros": zeros, "g_idx": gidx,
                         f"kept ({kept_dtype})": kept, "header": hdr})


def estimate_scheme(profile: ModelProfile, scheme: str, *, device: str = "cuda", **overrides: Any) -> SizeEstimate:
    """The size llmq would write for ``scheme`` with the scheme's defaults (or ``overrides``) when
    quantized on ``device`` (AWQ on CPU runs, and is saved, in fp32: see
    ``GPTQModelBackend.quantize_dtype``)."""
    from llmq.config import AWQConfig, Bnb4bitConfig, BnbInt8Config, CastConfig, GPTQConfig, Int8DynamicConfig
    from llmq.schemes import get_scheme

    sch = get_scheme(scheme)
    cfg = sch.config(**{k: v for k, v in overrides.items() if v is not None})
    skip = tuple(getattr(cfg, "skip_modules", ()) or ())
    if isinstance(cfg, CastConfig):
        return cast(profile, sch.name, cfg.dtype)
    if isinstance(cfg, Int8DynamicConfig) and cfg.quantize_embeddings or sch.name == "int8-static":
        from llmq.backends.int8_static import estimate as torchao_int8

        return torchao_int8(profile, cfg, sch.name)
    if isinstance(cfg, Int8DynamicConfig):
        return int8_rowwise(profile, sch.name, cfg.dtype, zero_point=True, skip=skip)
    if isinstance(cfg, BnbInt8Config):
        return int8_rowwise(profile, sch.name, cfg.dtype, zero_point=False, skip=skip)
    if isinstance(cfg, Bnb4bitConfig):
        return bnb4(profile, sch.name, cfg.quant_type, double_quant=cfg.double_quant, kept_dtype=cfg.dtype, skip=skip)
    if isinstance(cfg, AWQConfig):
        kept = "float32" if device == "cpu" else "bfloat16"
        return grouped(profile, sch.name, cfg.bits, cfg.group_size, g_idx=False, kept_dtype=kept, skip=skip)
    if isinstance(cfg, GPTQConfig):
        return grouped(profile, sch.name, cfg.bits, cfg.group_size, g_idx=True, skip=skip)
    raise NotImplementedError(f"no size formula for scheme {sch.name!r}")  # pragma: no cover


def original(profile: ModelProfile) -> SizeEstimate:
    """The unquantized checkpoint: fp32 (what llmq loads a GGUF or fp32 folder as)."""
    return cast(profile, "fp32", "float32", "fp32")


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
