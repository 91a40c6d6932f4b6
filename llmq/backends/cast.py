from __future__ import annotations

from pathlib import Path
from typing import Any

from llmq.backends.base import Backend, torch_dtype


class CastBackend(Backend):
    """fp16/bf16: the baseline every quantized scheme must beat on size."""

    name = "cast"

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(self.config.dtype), device_map=device
        )
