"""bitsandbytes LLM.int8() and 4-bit (NF4/FP4): quantized at load time through transformers'
``BitsAndBytesConfig``. bitsandbytes >= 0.50 also runs on CPU; whether it beats fp32 there depends
on the CPU (``eval/bench_cpu_speed.json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, Scheme, torch_dtype, transformers_snippet
from llmq.config import DTYPES, QuantConfigBase, check_choice
from llmq.errors import ConfigError
from llmq.models import excluded_modules, linear_shapes

BNB4_STATE_JSON = 170  # quant_state.bitsandbytes__nf4 (measured: 168-171 bytes)


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
        check_choice("dtype", self.dtype, ("float16", "bfloat16"))


@dataclass(kw_only=True)
class Bnb4bitConfig(QuantConfigBase):
    """bitsandbytes 4-bit (QLoRA's NF4 or FP4), double quantization of the scales on by default."""

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    dtype: str = "bfloat16"

    def validate(self) -> None:
        super().validate()
        check_choice("quant_type", self.quant_type, ("nf4", "fp4"))
        check_choice("compute_dtype", self.compute_dtype, DTYPES)
        check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"double_quant must be True or False, got {self.double_quant!r}.")



def bnb4_size(profile: Any, scheme: str, label: str, *, double_quant: bool = True, kept_dtype: str = "bfloat16",
              blocksize: int = 64, skip: tuple[str, ...] = ()) -> Any:
    """4-bit codes packed two per byte + one absmax per 64-block; with double quant the absmax is
    8-bit with one fp32 absmax per 256 blocks, plus the 256-entry fp32 nested code book, the 16-entry
    fp32 code book and a ~170-byte JSON quant state per layer; the rest at ``kept_dtype``."""
    from llmq.sizing import BYTES, SizeEstimate, base_tensors, header_bytes, kept_params, selected_linears

    lins, _ = selected_linears(profile, False, skip)
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
    kept = kept_params(profile, q) * BYTES[kept_dtype]
    n = base_tensors(profile) + len(profile.linears) + (per_layer_tensors - 1) * len(lins)
    hdr = header_bytes(n)
    return SizeEstimate(scheme, label, codes + scales + kept + hdr, q, kept_params(profile, q), kept_dtype,
                        8 * (codes + scales) / q if q else None,
                        {"4-bit codes": codes, "absmax/code books": scales, f"kept ({kept_dtype})": kept, "header": hdr})


class BitsAndBytesBackend(Backend):
    name = "bitsandbytes"
    requires = (("bitsandbytes", "bitsandbytes"),)
    extra = "bnb"
    quant_methods = ("bitsandbytes",)
    #: transformers' bitsandbytes integration transposes GPT-2-style Conv1D weights and quantizes them too
    layer_types = ("Linear", "Conv1D")
    schemes = (
        Scheme("bnb-int8", "bitsandbytes", BnbInt8Config, {}, 8, "bitsandbytes LLM.int8() with outlier threshold",
               "8", "8-bit for max accuracy (bitsandbytes LLM.int8())", True,
               tree_rank={"cpu": 2, "gpu_fits": 2, "gpu_8bit": 0, "gpu_4bit": 3}),
        Scheme("bnb-nf4", "bitsandbytes", Bnb4bitConfig, {"quant_type": "nf4"}, 4,
               "bitsandbytes 4-bit NormalFloat, double quantization", "4",
               "4-bit for QLoRA fine-tuning (bitsandbytes NF4)", True,
               tree_rank={"cpu": 6, "gpu_fits": 6, "gpu_8bit": 4, "gpu_4bit": 2}),
        Scheme("bnb-fp4", "bitsandbytes", Bnb4bitConfig, {"quant_type": "fp4"}, 4,
               "bitsandbytes 4-bit float, double quantization", "4",
               "4-bit float; NF4 is the better 4-bit bitsandbytes type (QLoRA paper)", True,
               tree_rank={"cpu": 7, "gpu_fits": 7, "gpu_8bit": 5, "gpu_4bit": 5}),
    )

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
        """Block by block from the checkpoint's shards (``llmq.streaming``) with transformers' own
        bitsandbytes quantize-on-load (its Linear replacement, then its per-weight quantize op), so
        memory is bounded by a layer; a checkpoint that cannot be streamed loads whole."""
        from transformers.quantizers.auto import AutoHfQuantizer

        from llmq.streaming import BlockModel, NotStreamable, stream_folder

        qc = self.hf_config(model_dir)
        hq = AutoHfQuantizer.from_config(qc, pre_quantized=False)
        op = hq.get_quantize_ops()

        def convert_param(model: Any, name: str, value: Any) -> Any:
            if not hq.param_needs_quantization(model, name):
                return None
            return op.convert({name: value}, model=model, full_layer_name=name)[name]

        try:
            bm = BlockModel(model_dir, torch_dtype(self.config.dtype), convert_param=convert_param,
                            prepare=lambda m: hq._process_model_before_weight_loading(m, device_map=None))
        except NotStreamable:
            return self._quantize_whole(model_dir, device)
        return stream_folder(bm, dtype=self.config.dtype, quantization_config=qc, device=device,
                             work_dir=self.options.get("work_dir"))

    def _quantize_whole(self, model_dir: Path, device: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=torch_dtype(self.config.dtype),
            device_map=device,
            quantization_config=self.hf_config(model_dir),
        )

    @classmethod
    def cost_features(cls, profile: Any, scheme: Scheme, config: Any) -> Any:
        """Block by block (``llmq.streaming``): a block at ``dtype`` and its converted copy, which
        holds int8 or 4-bit codes, not ``dtype`` values."""
        from llmq.cost import streamed
        from llmq.sizing import BYTES

        return streamed(profile, BYTES[config.dtype], cls.estimate(profile, scheme, config, "cpu").bytes,
                        converted_bytes=scheme.bits / 8)

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """int8: int8 ``weight`` + fp32 per-row ``SCB`` + a 1-byte ``weight_format``, rest fp16.
        4-bit: ``bnb4_size``."""
        skip = tuple(config.skip_modules)
        if isinstance(config, BnbInt8Config):
            from llmq.sizing import int8_rowwise

            return int8_rowwise(profile, scheme.name, config.dtype, zero_point=False, skip=skip)
        return bnb4_size(profile, scheme.name, config.quant_type, double_quant=config.double_quant,
                         kept_dtype=config.dtype, skip=skip)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        quant_type = (meta.get("config") or {}).get("quant_type")
        version = (meta.get("versions") or {}).get("bitsandbytes")
        return CardFacts(
            packages="transformers accelerate bitsandbytes", python=transformers_snippet(repo),
            tags=["bitsandbytes"] + ([quant_type] if quant_type else []),
            hardware="bitsandbytes: its fast kernels are CUDA kernels; CPU support is recent and not built for speed.",
            note=(f"Made with bitsandbytes {version}, whose fast kernels are CUDA kernels; "
                  "recent bitsandbytes releases (0.50 is the one llmq tests) also load it on CPU."),
            serve=f"vllm serve {repo} --quantization bitsandbytes", serve_note=VLLM_NOTE)
