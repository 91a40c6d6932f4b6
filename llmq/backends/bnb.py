from __future__ import annotations

from pathlib import Path
from typing import Any

from llmq.backends.base import Backend, torch_dtype
from llmq.config import BnbInt8Config
from llmq.models import excluded_modules, linear_shapes


class BitsAndBytesBackend(Backend):
    """bitsandbytes quantizes at load time; transformers' ``BitsAndBytesConfig`` drives it.
    bitsandbytes >= 0.50 also runs on CPU; whether it beats fp32 there depends on the CPU
    (``eval/bench_cpu_speed.json``)."""

    name = "bitsandbytes"
    requires = (("bitsandbytes", "bitsandbytes"),)
    extra = "bnb"

    def hf_config(self, model_dir: Path) -> Any:
        from transformers import AutoConfig, BitsAndBytesConfig

        cfg = AutoConfig.from_pretrained(model_dir)
        skip = excluded_modules(cfg, list(linear_shapes(cfg)), self.config.skip_modules) or None
        c = self.config
        if isinstance(c, BnbInt8Config):
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=c.threshold, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=c.quant_type,
            bnb_4bit_use_double_quant=c.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(c.compute_dtype),
            llm_int8_skip_modules=skip,
        )

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=torch_dtype(self.config.dtype),
            device_map=device,
            quantization_config=self.hf_config(model_dir),
        )
