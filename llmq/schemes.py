"""The scheme table: names users type, mapped to a backend and a default config.

Pure data with lazy backend entries, so ``llmq schemes`` and error messages never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmq import config as C
from llmq.errors import UnknownNameError
from llmq.registry import Registry

#: backend name -> "module:Class"; imported on first use only.
BACKENDS: Registry[Any] = Registry("backend")
BACKENDS.register("cast", "llmq.backends.cast:CastBackend")
BACKENDS.register("torchao", "llmq.backends.torchao:TorchAoBackend")
BACKENDS.register("bitsandbytes", "llmq.backends.bnb:BitsAndBytesBackend")
BACKENDS.register("gptqmodel", "llmq.backends.gptqmodel:GPTQModelBackend")
BACKENDS.register("int8-static", "llmq.backends.int8_static:Int8StaticBackend")


@dataclass(frozen=True)
class Scheme:
    name: str
    backend: str
    config_cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    bits: float = 16
    description: str = ""

    def config(self, **overrides: Any) -> C.SchemeConfig:
        """The scheme's default config with the user's overrides applied and validated."""
        return self.config_cls(**self.defaults).with_overrides(**overrides)

    def backend_cls(self) -> Any:
        return BACKENDS.get(self.backend)


SCHEMES: Registry[Scheme] = Registry("scheme")


def _lazy_int8_static_config() -> type:
    from llmq.backends.int8_static import Int8StaticConfig  # imports no torch at module level

    return Int8StaticConfig


def _add(s: Scheme) -> None:
    SCHEMES.register(s.name, s)


_add(Scheme("fp16", "cast", C.CastConfig, {"dtype": "float16"}, 16, "cast weights to float16"))
_add(Scheme("bf16", "cast", C.CastConfig, {"dtype": "bfloat16"}, 16, "cast weights to bfloat16"))
_add(Scheme("int8-dynamic", "torchao", C.Int8DynamicConfig, {}, 8,
            "torchao int8 weights per channel, int8 activations per token at run time"))
_add(Scheme("int8-static", "int8-static", _lazy_int8_static_config(), {}, 8,
            "torchao int8 weights and int8 activations with calibrated static scales (W8A8)"))
_add(Scheme("bnb-int8", "bitsandbytes", C.BnbInt8Config, {}, 8, "bitsandbytes LLM.int8() with outlier threshold"))
_add(Scheme("bnb-nf4", "bitsandbytes", C.Bnb4bitConfig, {"quant_type": "nf4"}, 4,
            "bitsandbytes 4-bit NormalFloat, double quantization"))
_add(Scheme("bnb-fp4", "bitsandbytes", C.Bnb4bitConfig, {"quant_type": "fp4"}, 4,
            "bitsandbytes 4-bit float, double quantization"))
for _bits in (4, 8, 3):
    _add(Scheme(f"gptq-int{_bits}", "gptqmodel", C.GPTQConfig, {"bits": _bits}, _bits,
                f"GPTQ {_bits}-bit weights (GPTQModel), calibrated"))
_add(Scheme("awq-int4", "gptqmodel", C.AWQConfig, {"bits": 4}, 4, "AWQ 4-bit weights, GEMM format (GPTQModel), calibrated"))


def get_scheme(name: str) -> Scheme:
    if not isinstance(name, str):
        raise UnknownNameError("scheme", repr(name), SCHEMES.names())
    return SCHEMES.get(name.strip().lower())
