"""torchao int8 dynamic quantization (int8 weights per channel, int8 activations per token at run
time), through transformers' ``TorchAoConfig`` so the checkpoint is written as safetensors with
torchao's metadata and reloads with plain ``from_pretrained``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, Scheme, torch_dtype, transformers_snippet
from llmq.config import DTYPES, QuantConfigBase, check_choice
from llmq.models import excluded_modules, linear_shapes


@dataclass(kw_only=True)
class Int8DynamicConfig(QuantConfigBase):
    """torchao int8 weights (per output channel) with int8 activations quantized per token at run
    time. Per-channel matters: per-tensor weight scales (the deprecated
    ``torch.ao.quantization.quantize_dynamic``) lose far more on small models."""

    weight_granularity: str = "per_channel"
    dtype: str = "float32"

    def validate(self) -> None:
        super().validate()
        check_choice("weight_granularity", self.weight_granularity, ("per_channel", "per_tensor"))
        check_choice("dtype", self.dtype, DTYPES)



class TorchAoBackend(Backend):
    name = "torchao"
    requires = (("torchao", "torchao"),)
    extra = "torchao"
    quant_methods = ("torchao",)
    schemes = (
        Scheme("int8-dynamic", "torchao", Int8DynamicConfig, {}, 8,
               "torchao int8 weights per channel, int8 activations per token at run time", "8",
               "CPU: int8 weights and activations (torchao), the CPU pick",
               tree_rank={"cpu": 0, "gpu_fits": 8, "gpu_8bit": 7, "gpu_4bit": 7}),
    )

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor
        from transformers import AutoConfig, AutoModelForCausalLM, TorchAoConfig

        gran = PerRow() if self.config.weight_granularity == "per_channel" else PerTensor()
        cfg = AutoConfig.from_pretrained(model_dir)
        skip = excluded_modules(cfg, list(linear_shapes(cfg)), self.config.skip_modules)
        qc = TorchAoConfig(
            Int8DynamicActivationInt8WeightConfig(granularity=gran, set_inductor_config=False),
            modules_to_not_convert=skip or None,
        )
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(self.config.dtype), device_map=device, quantization_config=qc
        )

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """``_weight_qdata`` int8 + per-row fp32 ``_weight_scale`` + int8 ``_weight_zero_point``;
        everything else at the config's ``dtype`` (float32 by default)."""
        from llmq.advisor.estimate import int8_rowwise

        return int8_rowwise(profile, scheme.name, config.dtype, zero_point=True, skip=tuple(config.skip_modules))

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        version = (meta.get("versions") or {}).get("torchao")
        return CardFacts(
            packages="transformers accelerate torchao", python=transformers_snippet(repo), tags=["torchao"],
            hardware="torchao int8 dynamic quantization runs on CPU and GPU; its speed depends on torch.compile and "
                     "the int8 matmul kernels of your hardware.",
            note=(f"Made with torchao {version}: torchao checkpoints are tied to torchao's "
                  "serialization format, so load them with the same (or a compatible) torchao version."),
            serve=f"vllm serve {repo}",
            serve_note=("vLLM reads torchao checkpoints saved by transformers (see torchao's serving guide, "
                        "docs.pytorch.org/ao/stable/serving.html) when its torchao version matches; "
                        "llmq has not tested this path. " + VLLM_NOTE))
