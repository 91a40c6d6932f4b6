"""Quantization-aware training (QAT) as a scheme plugin: ``quantize`` fine-tunes the model with
torchao fake quantization (``QATConfig(..., step="prepare")``) on training text, then exports it so
the saved model computes exactly what training saw.

Two export formats:

* ``qat-int4`` (int4 weight-only): a packed 4-bit **GPTQ** folder (``quant_method`` "gptq", v1
  checkpoint format, symmetric, group 32, fp16 scales, bf16 embeddings/norms), the format of llmq's
  ``gptq-int4``: ``llmq.load`` / transformers load it through GPTQModel, whose AVX-512-BF16 int4 CPU
  kernel or GPU kernels (Marlin, ...) run it. The int4 codes and scales are torchao's (training's):
  ``llmq.backends.qat.convert.to_gptq`` packs them with GPTQModel's packer and checks that the packed
  weights dequantize to the fake-quantized ones bit for bit. To make that exact, this scheme's fake
  quantizer rounds its scales to fp16 (the precision GPTQ stores) during training.
* ``qat-8da4w``, ``qat-w8a8``, ``qat-int8``: converted with the same torchao base config
  (``step="convert"``) into a torchao safetensors folder with a ``TorchAoConfig``; the torchao
  plugin (``quant_method`` "torchao") loads it with plain ``from_pretrained``. The input embedding
  and ``lm_head`` are int8 per row there, as in llmq's int8-dynamic (``quantize_embeddings``, on by
  default): training fake-quantizes them with the grid torchao's ``Int8WeightOnlyConfig`` stores
  (equal bit for bit), so the export computes what training saw. Kept float, SmolLM2's fp32
  embedding made qat-w8a8 220.5 MB against int8-dynamic's 135.9 MB.

Why Intx base configs: in torchao 0.18 ``QATConfig`` derives fake quantizers from
``IntxWeightOnlyConfig`` and ``Int8DynamicActivationIntxWeightConfig`` on CPU (``Int4WeightOnlyConfig``
needs CUDA kernels; ``Int8DynamicActivationInt8WeightConfig``, llmq's int8-dynamic, is not
supported), so W8A8 here is int8 per-channel weights with int8 per-token dynamic activations
through ``Int8DynamicActivationIntxWeightConfig``.

The config and torchao base configs are in ``config``, fake quantization and export in ``convert``,
the training loop and checkpoints in ``train``; ``llmq.qat`` is a pipeline (``llmq.pipeline.qat``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, Scheme, transformers_snippet
from llmq.backends.qat.config import OBJECTIVES, QATConfig, exports_gptq
from llmq.errors import ConfigError


_RANK_LAST = {"cpu": 50, "gpu_fits": 50, "gpu_8bit": 50, "gpu_4bit": 50}  # never the advisor's first pick: it trains
_TRAINS = "fine-tunes with fake quantization (needs training text and time; `llmq qat`, or --scheme auto --allow-training)"


class QATBackend(Backend):
    name = "qat"
    requires = (("torchao", "torchao"),)
    extra = "torchao"
    needs_calibration = False
    needs_training = True
    quant_methods = ()  # the output is a GPTQ or torchao folder: the gptqmodel or torchao plugin loads it
    exports = ("compressed-tensors",)  # qat-int4 only (its config checks): the GPTQ folder, converted
    schemes = (
        Scheme("qat-int4", "qat", QATConfig, {"bits": 4, "group_size": 32}, 4,
               "QAT: int4 weights, group 32, symmetric (torchao fake quantization), saved as packed GPTQ", "4",
               f"4-bit weights that win back part of the rounding loss by training, run by GPTQModel's 4-bit "
               f"kernels; {_TRAINS}",
               tree_rank={**_RANK_LAST, "cpu": 51, "gpu_4bit": 49}, serve_as="w4a16"),
        Scheme("qat-8da4w", "qat", QATConfig, {"bits": 4, "group_size": 32, "act_bits": 8}, 4,
               "QAT: int4 weights (group 32) with int8 dynamic per-token activations", "4",
               f"4-bit weights and int8 activations (ExecuTorch-style 8da4w); {_TRAINS}",
               tree_rank={**_RANK_LAST, "cpu": 52, "gpu_4bit": 49.5}),
        Scheme("qat-w8a8", "qat", QATConfig, {"bits": 8, "group_size": -1, "act_bits": 8}, 8,
               "QAT: int8 per-channel weights with int8 dynamic per-token activations", "8",
               f"int8 weights and activations, trained; {_TRAINS}", tree_rank=_RANK_LAST),
        Scheme("qat-int8", "qat", QATConfig, {"bits": 8, "group_size": -1}, 8,
               "QAT: int8 per-channel weights, weight-only", "8",
               f"int8 weights, trained; {_TRAINS}", tree_rank={k: v + 1 for k, v in _RANK_LAST.items()}),
    )

    def misfit(self, config: Any, *, trust_remote_code: bool = False) -> str | None:
        """The group size must divide every quantized layer's in_features (torchao's fake quantizer
        asserts it mid-run otherwise)."""
        gs = self.config.group_size
        if gs == -1:
            return None
        from llmq.backends.base import block_shapes

        shapes = block_shapes(config, tuple(self.config.skip_modules), trust_remote_code=trust_remote_code)
        bad = sorted({s[0] for s in shapes.values() if s[0] % gs})
        if bad:
            return (f"group_size={gs} does not divide in_features {bad} of this model's decoder "
                    "linears; pick a group size that does (--set group_size=...) or -1.")
        return None

    def validate_model(self, source: Any) -> None:
        """Before any weight loads: ``unsupported``, the GPTQ export's packages and enough training
        text for ``steps x batch_size x seqlen`` (tokenizes the text once)."""
        from llmq.errors import MissingDependencyError
        from llmq.backends.qat.train import build_data

        if exports_gptq(self.config):
            from llmq.backends.gptqmodel import GPTQModelBackend

            missing = GPTQModelBackend.missing_packages()
            if missing:
                raise MissingDependencyError(f"Scheme {self.scheme.name!r} (saved as GPTQ)", missing, "gptq")
        super().validate_model(source)
        build_data(self.config, source.tokenizer())

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        from llmq.backends.qat.train import train_model

        model, self.training = train_model(model_dir, self.config, device, **self.options)
        if exports_gptq(self.config) and self.training.get("fake_quant", True):
            # GPTQModel's packing modules are a checkpoint, not a runnable model: run the saved folder
            self.runs_in_memory = False
        return model

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        """``save_pretrained``; a GPTQ export also gets GPTQModel's ``quantize_config.json``."""
        super().save(model, tokenizer, out)
        qc = getattr(model.config, "quantization_config", None)
        if isinstance(qc, dict) and qc.get("quant_method") == "gptq":
            from llmq.io import write_json

            write_json(out / "quantize_config.json", qc)

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        from llmq.backends.compressed import export_via_folder

        return export_via_folder(self.save, model, tokenizer, out)

    def versions(self) -> dict[str, str | None]:
        v = super().versions()
        if exports_gptq(self.config):
            from llmq.backends.base import package_version

            v["gptqmodel"] = package_version("gptqmodel")
        return v

    def extra_metadata(self) -> dict[str, Any]:
        t = getattr(self, "training", None)
        if t is None:
            return {}
        if not t.get("fake_quant", True):  # the fp32 twin: fine-tuned, not quantized
            return {"training": t, "scheme": "qat-fp32-twin", "bits": 32, "quantization_config": None,
                    "twin_of": self.scheme.name}
        return {"training": t}

    @classmethod
    def cost_features(cls, profile: Any, scheme: Scheme, config: Any) -> Any:
        """Not streamed: training holds the fp32 model, its gradients and AdamW's two moments (16
        bytes per parameter), and the fp32 original as teacher when distilling (4 more). No measured
        coefficients, so ``run`` checks this formula alone: a 7B model needs ~140 GB, refused up front."""
        from llmq.cost import CostFeatures

        per = 16 + (4 if config.objective == "distill" else 0)
        return CostFeatures(float(per * profile.parameters), float(profile.parameters * config.steps), streams=False)

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """GPTQ export (int4 weight-only): GPTQ's packing with bf16 kept tensors, like ``gptq-int4``.
        torchao folders: ``IntxUnpackedToInt8Tensor``, int8 ``qdata`` (4-bit values in int8
        containers), one fp32 scale and one int8 zero point per group (per row for group -1);
        embeddings and a separate lm_head int8 per row (fp32 scale + int8 zero point per row) unless
        ``quantize_embeddings=False``; the rest fp32 (training runs in fp32)."""
        from llmq.sizing import BYTES, SizeEstimate, base_tensors, header_bytes, kept_params, selected_linears

        if exports_gptq(config):
            from llmq.backends.gptqmodel import grouped_size

            return grouped_size(profile, scheme.name, config.bits, config.group_size, g_idx=True,
                                skip=tuple(config.skip_modules))
        lins, _ = selected_linears(profile, False, tuple(config.skip_modules))
        q = sum(l.numel for l in lins)
        groups = sum(l.out_features * (1 if config.group_size == -1 else math.ceil(l.in_features / config.group_size))
                     for l in lins)
        scales = groups * (4 + 1)
        n_tensors = base_tensors(profile) + len(profile.linears) + 2 * len(lins)
        from llmq.backends.torchao import int8_embedding_bytes

        emb_q, emb_scales, n_tables = int8_embedding_bytes(profile, config.quantize_embeddings)
        scales += emb_scales
        if config.quantize_embeddings:
            n_tensors += 2 * n_tables  # scale and zero point beside each table base_tensors counts
        kept_n = kept_params(profile, q) - emb_q
        kept = kept_n * BYTES["float32"]
        hdr = header_bytes(n_tensors, "torchao")
        return SizeEstimate(scheme.name, f"int{config.bits}", q + emb_q + scales + kept + hdr, q + emb_q, kept_n,
                            "float32", 8 * (q + emb_q + scales) / (q + emb_q) if q else None,
                            {"int8 containers": q + emb_q, "scales/zeros": scales, "kept (float32)": kept,
                             "header": hdr})

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        cfg = meta.get("config") or {}
        bits = cfg.get("bits")
        versions = meta.get("versions") or {}
        if (meta.get("quantization_config") or {}).get("quant_method") == "gptq":
            return CardFacts(
                packages="transformers gptqmodel optimum", python=transformers_snippet(repo),
                tags=["gptq", "qat", "int4"],
                hardware=("Packed 4-bit GPTQ weights (symmetric, group "
                          f"{cfg.get('group_size')}, fp16 scales; embeddings and norms in bf16), the format of "
                          "llmq's gptq-int4, so about a quarter of a bf16 checkpoint's linear weights. "
                          "GPTQModel picks the kernel when it loads: on x86 CPUs with AVX-512-BF16 its fused "
                          "int4 kernel (TorchCpuAvx512Linear, bf16 activations), on other CPUs a torch kernel, "
                          "on NVIDIA GPUs Marlin or another GPTQ kernel."),
                note=(f"Trained with torchao {versions.get('torchao')} fake quantization and packed with GPTQModel "
                      f"{versions.get('gptqmodel')}: the 4-bit codes and scales are the ones training used "
                      "(checked bit for bit at export); no GPTQ error correction was run."),
                serve=f"vllm serve {repo}",
                serve_note="vLLM reads the GPTQ settings from config.json. " + VLLM_NOTE,
                rows=training_rows(meta))
        return CardFacts(
            packages="transformers accelerate torchao", python=transformers_snippet(repo),
            tags=["torchao", "qat", *([f"int{bits}"] if bits else []),
                  *(["w8a8"] if bits == 8 and cfg.get("act_bits") == 8 else [])],
            hardware=("Linear weights are stored unpacked in int8 containers (torchao IntxUnpackedToInt8Tensor), so a "
                      "4-bit checkpoint is the size of an 8-bit one, not half of it; "
                      + ("the embeddings and lm_head are int8 per row (torchao Int8Tensor). "
                         if cfg.get("quantize_embeddings", True) else "the embeddings stay fp32. ")
                      + "Inference dequantizes on the fly (no fused 4-bit kernel), which on CPU is slower than fp32."),
            note=(f"Made with torchao {versions.get('torchao')}: torchao checkpoints are tied to torchao's "
                  "serialization format, so load them with the same (or a compatible) torchao version."),
            rows=training_rows(meta))


def training_rows(meta: dict) -> list[tuple[str, str]]:
    """Card rows that say the model was trained, on what, for how many steps."""
    t = meta.get("training") or {}
    if not t:
        return []
    c = meta.get("config") or {}
    stop = " (stopped early: the gate held)" if t.get("early_stopped") else ""
    return [
        ("Training", f"{t.get('method')}: {t.get('steps_done')} of {t.get('steps_planned')} steps{stop}, "
                     f"{t.get('tokens_trained')} tokens, {t.get('train_seconds')} s"),
        ("Training data", f"`{t.get('data')}` (sha256 `{str(t.get('data_sha256', ''))[:16]}`)"),
        ("Training objective", OBJECTIVES.get(c.get("objective", "lm"), str(c.get("objective")))),
        ("Training settings", f"lr {c.get('lr')}, batch {c.get('batch_size')} x {c.get('seqlen')} tokens, "
                              f"warmup {c.get('warmup_steps')}, seed {c.get('seed')}, {t.get('precision')}"),
        ("Training loss", f"{t.get('loss_first')} (first step) -> {t.get('loss_last_10_mean')} (mean of last 10)"),
    ]
