"""``fp8``: FP8 E4M3 weights with one scale per output channel, and FP8 activations quantized per
token at run time -- compressed-tensors' ``FP8_DYNAMIC`` preset, the scheme vLLM runs on the FP8
tensor cores of Ada and Hopper GPUs (and as FP8 weight-only Marlin on Ampere). No calibration.

* Weight scales are max|W| / 448 per output row, computed by compressed-tensors'
  ``calculate_qparams`` (what llm-compressor's min-max observer feeds it); no code is written here.
* The model ``quantize`` returns is compressed-tensors' own fake-quantized model (its
  ``apply_quantization_config`` forward: weights and each token's activations rounded to the FP8
  grid and back, matmuls in float). That is how llmq measures the scheme's quality on CPU, not its
  speed: CPUs have no FP8 matmul.
* The output is a compressed-tensors folder (``float-quantized``: FP8 weights and their scales)
  written by ``llmq.backends.compressed.write_compressed``; the compressed-tensors plugin loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llmq.backends.base import Scheme, torch_dtype
from llmq.backends.compressed import FORMAT, CompressedTensorsBackend, LayerQuant, dense_model, write_compressed
from llmq.config import DTYPES, QuantConfigBase, check_choice

PRESET = "FP8_DYNAMIC"


@dataclass(kw_only=True)
class FP8Config(QuantConfigBase):
    """FP8 E4M3 weights per channel with dynamic per-token FP8 activations. ``dtype``: what the
    layers FP8 does not touch (embeddings, norms, lm_head) are stored in and vLLM serves in."""

    formats: ClassVar[tuple[str, ...]] = (FORMAT,)
    format: str | None = FORMAT
    dtype: str = "bfloat16"

    def validate(self) -> None:
        super().validate()
        check_choice("dtype", self.dtype, DTYPES)


def fp8_scheme() -> Any:
    from compressed_tensors.quantization import preset_name_to_scheme

    return preset_name_to_scheme(PRESET, ["Linear"])


class FP8Backend(CompressedTensorsBackend):
    """``fp8``: quantizes with compressed-tensors and writes compressed-tensors; its folders are
    loaded by the compressed-tensors plugin (``quant_methods`` stays there)."""

    name = "fp8"
    quant_methods = ()
    exports = (FORMAT,)
    schemes = (
        Scheme("fp8", "fp8", FP8Config, {}, 8,
               "FP8 E4M3 weights per channel, FP8 activations per token at run time (compressed-tensors; vLLM)", "8",
               "GPU serving with vLLM: FP8 weights and activations on Hopper/Ada FP8 tensor cores, about half of bf16; "
               "on CPU only fake-quantized (quality, not speed)", True,
               tree_rank={"cpu": 20, "gpu_fits": 7.5, "gpu_8bit": 1.5, "gpu_4bit": 6.5}, serve_as="w8a8-fp8"),
    )

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        import torch
        from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize
        from compressed_tensors.quantization.utils import calculate_qparams
        from transformers import AutoModelForCausalLM

        from llmq.models import excluded_modules

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(self.config.dtype), device_map=device)
        model.eval()
        head = model.get_output_embeddings()
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
        skip = set(excluded_modules(None, linears, tuple(self.config.skip_modules))) if self.config.skip_modules else set()
        ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and (m is head or n in skip)]
        scheme = fp8_scheme()
        apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore,
                                                            quantization_status=QuantizationStatus.FROZEN),
                                  show_progress=False)
        with torch.no_grad():
            for n in linears:
                if n in skip:
                    continue
                mod = model.get_submodule(n)
                w = mod.weight.detach().float()
                scale, _ = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), scheme.weights)
                mod.weight_scale.copy_(scale.to(mod.weight_scale.dtype))
                # hold the FP8 grid values: the fake quantization then finds the same codes at any
                # dtype (re-rounding bf16 weights in bf16 arithmetic would move a few)
                mod.weight.copy_(fake_quantize(w, mod.weight_scale.float(), None, scheme.weights).to(mod.weight.dtype))
                mod.quantization_status = QuantizationStatus.FROZEN
        return model

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        """The fake-quantized model's weights and llmq's scales, through the shared writer (which
        rounds the weights to FP8 with those scales: the codes the fake quantization used)."""
        weights = fp8_scheme().weights.model_dump(exclude_none=True)
        acts = fp8_scheme().input_activations.model_dump(exclude_none=True)
        layers, state = {}, {}
        quantized = {n for n, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None}
        for key, value in model.state_dict().items():
            mod, _, attr = key.rpartition(".")
            if mod not in quantized:
                state[key] = value
            elif attr == "weight":
                m = model.get_submodule(mod)
                layers[mod] = LayerQuant(weights, value.float(), m.weight_scale.detach(), None, acts)
            elif not attr.startswith(("weight_", "input_", "output_")):  # not compressed-tensors' qparams
                state[key] = value  # e.g. Qwen2's q/k/v biases
        return write_compressed(dense_model(model.config, torch_dtype(self.config.dtype), state, set(layers)),
                                layers, out, tokenizer)

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        self.export(model, tokenizer, out, FORMAT)

    def quantization_config(self, model: Any) -> dict | None:
        return None  # the export's, recorded when it writes

    @classmethod
    def cost_features(cls, profile: Any, scheme: Scheme, config: Any) -> Any:
        """Not streamed: the model at ``dtype``, the dense copy the writer rebuilds, and each
        quantized weight in float32 while the writer derives its codes (no measured coefficients
        yet, so ``llmq.cost.project`` projects nothing for fp8)."""
        from llmq.cost import CostFeatures
        from llmq.sizing import BYTES

        ram = 2 * profile.parameters * BYTES[config.dtype] + 4 * sum(l.numel for l in profile.linears)
        return CostFeatures(float(ram), float(profile.parameters), streams=False)

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """FP8 codes (1 byte) per quantized weight, one scale per output row at ``dtype``; every
        other parameter (embeddings, norms, lm_head) at ``dtype``."""
        from llmq.sizing import BYTES, SizeEstimate, base_tensors, header_bytes, selected_linears

        lins, _ = selected_linears(profile, False, tuple(config.skip_modules))
        lins = [l for l in lins if l.name != "lm_head"]
        q = sum(l.numel for l in lins)
        scales = sum(l.out_features for l in lins) * BYTES[config.dtype]
        kept_n = profile.parameters - q
        kept = kept_n * BYTES[config.dtype]
        hdr = header_bytes(base_tensors(profile) + len(profile.linears) + len(lins))
        return SizeEstimate(scheme.name, "fp8", q + scales + kept + hdr, q, kept_n, config.dtype,
                            8 * (q + scales) / q if q else None,
                            {"fp8 weights": q, "scales": scales, f"kept ({config.dtype})": kept, "header": hdr})
