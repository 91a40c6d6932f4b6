"""One typed, validated config dataclass per scheme family.

Configs validate in ``__post_init__`` with ``ConfigError`` (a ``ValueError``), never ``assert``
(stripped under ``python -O``). ``with_overrides`` is the one way user keyword arguments reach a
config, so an unknown override is rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from llmq.errors import ConfigError, UnknownNameError

DTYPES = ("float32", "float16", "bfloat16")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is invalid; choose one of {', '.join(map(repr, choices))}.")


@dataclass(kw_only=True)
class SchemeConfig:
    """Fields every scheme shares."""

    #: how the description is shown in ``llmq schemes``
    kind: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    def with_overrides(self, **overrides: Any) -> "SchemeConfig":
        names = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in names:
                raise UnknownNameError(f"option for {type(self).__name__}", key, names)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(overrides)
        if "skip_modules" in values and isinstance(values["skip_modules"], (list, str)):
            sm = values["skip_modules"]
            values["skip_modules"] = tuple([sm] if isinstance(sm, str) else sm)
        return type(self)(**values)


@dataclass(kw_only=True)
class CastConfig(SchemeConfig):
    """fp16/bf16: halve the size of an fp32 checkpoint with no calibration and no kernels."""

    dtype: str = "float16"

    def validate(self) -> None:
        _check_choice("dtype", self.dtype, ("float16", "bfloat16"))


@dataclass(kw_only=True)
class QuantConfigBase(SchemeConfig):
    """Schemes that replace Linear weights. ``skip_modules``: names or fnmatch patterns kept in full
    precision; ``lm_head`` and tied embeddings are never quantized by default."""

    skip_modules: tuple[str, ...] = ()

    def validate(self) -> None:
        if isinstance(self.skip_modules, str):
            self.skip_modules = (self.skip_modules,)
        self.skip_modules = tuple(self.skip_modules)
        for s in self.skip_modules:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"skip_modules entries must be non-empty strings, got {s!r}.")


@dataclass(kw_only=True)
class Int8DynamicConfig(QuantConfigBase):
    """torchao int8 weights (per output channel) with int8 activations quantized per token at run
    time. Per-channel matters: per-tensor weight scales (the deprecated
    ``torch.ao.quantization.quantize_dynamic``) lose far more on small models."""

    weight_granularity: str = "per_channel"
    dtype: str = "float32"
    quantize_embeddings: bool = True  # int8 per-row embeddings and lm_head (False: keep them at dtype)

    def validate(self) -> None:
        super().validate()
        _check_choice("weight_granularity", self.weight_granularity, ("per_channel", "per_tensor"))
        _check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.quantize_embeddings, bool):
            raise ConfigError(f"quantize_embeddings must be True or False, got {self.quantize_embeddings!r}.")


@dataclass(kw_only=True)
class BnbInt8Config(QuantConfigBase):
    """LLM.int8(): int8 weights, outlier activation columns above ``threshold`` kept in fp16.
    Loaded in 16-bit: fp32 inputs make bitsandbytes warn on every matmul."""

    threshold: float = 6.0
    dtype: str = "float16"

    def validate(self) -> None:
        super().validate()
        if not (self.threshold >= 0):
            raise ConfigError(f"threshold must be >= 0, got {self.threshold!r}.")
        _check_choice("dtype", self.dtype, ("float16", "bfloat16"))


@dataclass(kw_only=True)
class Bnb4bitConfig(QuantConfigBase):
    """bitsandbytes 4-bit (QLoRA's NF4 or FP4), double quantization of the scales on by default."""

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    dtype: str = "bfloat16"

    def validate(self) -> None:
        super().validate()
        _check_choice("quant_type", self.quant_type, ("nf4", "fp4"))
        _check_choice("compute_dtype", self.compute_dtype, DTYPES)
        _check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"double_quant must be True or False, got {self.double_quant!r}.")


@dataclass(kw_only=True)
class CalibratedConfig(QuantConfigBase):
    """Schemes that need calibration text. ``calibration`` is a named dataset (``wikitext2``,
    ``c4``, ``pileval``, ``builtin``), a local .txt/.jsonl/.parquet path, or a list of strings."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    calibration: Any = "wikitext2"
    n_samples: int = 128
    seqlen: int = 512
    seed: int = 0
    allowed_bits: ClassVar[tuple[int, ...]] = (2, 3, 4, 8)

    def validate(self) -> None:
        super().validate()
        if self.bits not in self.allowed_bits:
            raise ConfigError(
                f"bits={self.bits!r} is invalid for {type(self).__name__}; choose one of "
                f"{', '.join(map(str, self.allowed_bits))}."
            )
        if not isinstance(self.group_size, int) or not (
            self.group_size == -1 or (self.group_size >= 16 and self.group_size & (self.group_size - 1) == 0)
        ):
            raise ConfigError(
                f"group_size={self.group_size!r} is invalid; use -1 (per channel) or a power of two >= 16 "
                "(32, 64, 128, ...)."
            )
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer, got {self.n_samples!r}.")
        if not isinstance(self.seqlen, int) or self.seqlen < 8:
            raise ConfigError(f"seqlen must be an integer >= 8, got {self.seqlen!r}.")
        if not isinstance(self.sym, bool):
            raise ConfigError(f"sym must be True or False, got {self.sym!r}.")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not isinstance(self.calibration, (str, type(None))):
            out["calibration"] = f"<{len(self.calibration)} strings>"
        return out


@dataclass(kw_only=True)
class GPTQConfig(CalibratedConfig):
    """GPTQ through GPTQModel. ``desc_act`` (act-order) helps accuracy but slows some kernels;
    ``act_group_aware`` is GPTQModel's reordering that keeps groups contiguous (its default)."""

    desc_act: bool = False
    act_group_aware: bool = True
    damp_percent: float = 0.05

    def validate(self) -> None:
        super().validate()
        if not (0 < self.damp_percent < 1):
            raise ConfigError(f"damp_percent must be in (0, 1), got {self.damp_percent!r}.")
        if self.desc_act and self.act_group_aware:
            raise ConfigError("desc_act=True and act_group_aware=True are exclusive; set act_group_aware=False.")


@dataclass(kw_only=True)
class AWQConfig(CalibratedConfig):
    """AWQ through GPTQModel, GEMM format (what vLLM and transformers load)."""

    allowed_bits: ClassVar[tuple[int, ...]] = (4,)
    sym: bool = False
    format: str = "gemm"

    def validate(self) -> None:
        super().validate()
        _check_choice("format", self.format, ("gemm", "gemv"))
        if self.group_size == -1:
            raise ConfigError("AWQ needs a group size (32, 64 or 128); -1 is not supported.")
