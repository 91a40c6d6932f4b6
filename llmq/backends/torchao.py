from __future__ import annotations

from pathlib import Path
from typing import Any

from llmq.backends.base import Backend, torch_dtype
from llmq.models import excluded_modules, linear_shapes


class TorchAoBackend(Backend):
    """torchao dynamic int8 through transformers' ``TorchAoConfig``, so the checkpoint is written
    as safetensors with torchao's metadata and reloads with plain ``from_pretrained``."""

    name = "torchao"
    requires = (("torchao", "torchao"),)
    extra = "torchao"

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
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(self.config.dtype), device_map=device, quantization_config=qc
        )
        if self.config.quantize_embeddings:  # int8 per row; fp32 embeddings were 40% of the folder
            from llmq.backends.int8_static import attach_torchao_saver, quantize_embeddings

            quantize_embeddings(model)
            qc.include_input_output_embeddings = True
            attach_torchao_saver(model, qc)
        return model
