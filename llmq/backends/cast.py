"""fp16/bf16: cast the weights, no calibration, no kernels; the baseline every quantized scheme
must beat on size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, Scheme, torch_dtype, transformers_snippet
from llmq.config import SchemeConfig, check_choice


@dataclass(kw_only=True)
class CastConfig(SchemeConfig):
    """fp16/bf16: halve the size of an fp32 checkpoint with no calibration and no kernels."""

    dtype: str = "float16"

    def validate(self) -> None:
        check_choice("dtype", self.dtype, ("float16", "bfloat16"))


def cast_size(profile: Any, scheme: str = "fp16", dtype: str = "float16", label: str | None = None) -> Any:
    """Every parameter at ``dtype``."""
    from llmq.sizing import BYTES, SizeEstimate, base_tensors, header_bytes

    b = BYTES[dtype]
    n = len(profile.linears) + base_tensors(profile)
    data = profile.parameters * b
    return SizeEstimate(scheme, label or {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype],
                        data + header_bytes(n), 0, profile.parameters, dtype, None,
                        {"weights": data, "header": header_bytes(n)})


class CastBackend(Backend):
    name = "cast"
    layer_types = None  # casts every weight, whatever layer holds it
    schemes = (
        Scheme("fp16", "cast", CastConfig, {"dtype": "float16"}, 16, "cast weights to float16", "16",
               "no quantization: the baseline when it fits (fp16 on pre-Ampere GPUs)",
               tree_rank={"cpu": 8, "gpu_fits": 1, "gpu_8bit": 9, "gpu_4bit": 9}, serve_as="16-bit"),
        Scheme("bf16", "cast", CastConfig, {"dtype": "bfloat16"}, 16, "cast weights to bfloat16", "16",
               "no quantization: the baseline when it fits (bf16 on Ampere+ GPUs)",
               tree_rank={"cpu": 1, "gpu_fits": 0, "gpu_8bit": 8, "gpu_4bit": 8}, serve_as="16-bit"),
    )

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        """Tensor by tensor from the checkpoint's shards into new shards (``llmq.streaming``):
        memory is bounded by a layer and a shard; a checkpoint that cannot be streamed loads whole."""
        from llmq.streaming import BlockModel, NotStreamable, stream_folder

        dtype = torch_dtype(self.config.dtype)
        try:
            bm = BlockModel(model_dir, dtype)
        except NotStreamable:
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device)
        return stream_folder(bm, dtype=self.config.dtype, work_dir=self.options.get("work_dir"))

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        return cast_size(profile, scheme.name, config.dtype)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        dtype = (meta.get("config") or {}).get("dtype", "float16")
        return CardFacts(
            packages="transformers accelerate", python=transformers_snippet(repo), tags=[dtype],
            hardware="16-bit weights: float16/bfloat16 matmuls are fast on GPUs; on CPU they are often slower "
                     "than float32.",
            serve=f"vllm serve {repo} --dtype {(meta.get('config') or {}).get('dtype', 'auto')}", serve_note=VLLM_NOTE)
