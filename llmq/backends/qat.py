"""Quantization-aware training (QAT) as a scheme plugin: ``quantize`` fine-tunes the model with
torchao fake quantization (``QATConfig(..., step="prepare")``) on training text, then exports it so
the saved model computes exactly what training saw.

Two export formats:

* ``qat-int4`` (int4 weight-only): a packed 4-bit **GPTQ** folder (``quant_method`` "gptq", v1
  checkpoint format, symmetric, group 32, fp16 scales, bf16 embeddings/norms), the format of llmq's
  ``gptq-int4``: ``llmq.load`` / transformers load it through GPTQModel, whose AVX-512-BF16 int4 CPU
  kernel or GPU kernels (Marlin, ...) run it. The int4 codes and scales are torchao's (training's):
  ``llmq.quantization_aware.to_gptq`` packs them with GPTQModel's packer and checks that the packed
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

The training loop, checkpoints and ``llmq.qat`` live in ``llmq.quantization_aware``; this file
holds everything scheme-specific (config, torchao base config, size, advisor role, card facts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, Scheme, transformers_snippet
from llmq.config import QuantConfigBase
from llmq.errors import ConfigError


@dataclass(kw_only=True)
class QATConfig(QuantConfigBase):
    """What one QAT run trains toward and how. ``act_bits=8``: int8 dynamic per-token activations
    (None: weight-only); ``group_size=-1``: one scale per output channel. ``data`` is a named
    dataset (``wikitext2`` = WikiText-2 *train* text, never the test split), a .txt/.jsonl/.parquet
    file or a list of strings. The last ``eval_windows`` windows of it are held out for the early
    stop (``max_ppl_increase``: stop once the fake-quantized model's held-out perplexity is within
    this of the untrained model's). ``objective="distill"`` (default) trains the quantized model to
    match the original model's next-token distributions (KL divergence; the original runs frozen
    beside it), which recovers what rounding lost without drifting toward the training text;
    ``"lm"`` is plain next-token cross-entropy on the data (it also adapts the model to that text,
    so judge it against an fp32 twin). Embeddings are frozen by default (``train_embeddings``); the torchao
    exports store them and ``lm_head`` int8 per row (``quantize_embeddings``; qat-int4's GPTQ format
    keeps them bf16)."""

    bits: int = 4
    group_size: int = 32
    act_bits: int | None = None
    data: Any = "wikitext2"
    steps: int = 100
    lr: float = 1e-5
    seed: int = 0
    batch_size: int = 4
    seqlen: int = 256
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    eval_every: int = 25
    eval_windows: int = 8
    max_ppl_increase: Any = None
    train_embeddings: bool = False
    quantize_embeddings: bool = True  # torchao exports: int8 per-row embedding + lm_head (fake-quantized in training)
    gradient_checkpointing: bool | None = None  # None: on for CUDA
    objective: str = "distill"  # "distill": KL to the original model's outputs; "lm": cross-entropy on the data

    def validate(self) -> None:
        """Every check that needs no weights and no tokenizer; one line each."""
        super().validate()
        from llmq.errors import CalibrationError
        from llmq.eval.gate import parse_increase

        if self.bits not in (4, 8):
            raise ConfigError(f"QAT bits must be 4 or 8, got {self.bits!r}.")
        if self.act_bits not in (None, 8):
            raise ConfigError(f"QAT act_bits must be 8 (int8 dynamic activations) or None, got {self.act_bits!r}.")
        if not isinstance(self.group_size, int) or not (self.group_size == -1 or (
                self.group_size >= 16 and self.group_size & (self.group_size - 1) == 0)):
            raise ConfigError(f"group_size={self.group_size!r} is invalid; use -1 (per channel) or a power of two >= 16.")
        for k in ("steps", "batch_size", "seqlen", "checkpoint_every", "eval_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"QAT {k} must be a positive integer, got {v!r}.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"QAT learning rate must be > 0, got {self.lr!r}.")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.eval_windows < 0:
            raise ConfigError("QAT warmup_steps, weight_decay, grad_clip and eval_windows must not be negative.")
        for k in ("train_embeddings", "quantize_embeddings"):
            if not isinstance(getattr(self, k), bool):
                raise ConfigError(f"QAT {k} must be True or False, got {getattr(self, k)!r}.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"QAT objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        parse_increase(self.max_ppl_increase)
        if self.max_ppl_increase not in (None, "") and self.eval_windows < 1:
            raise ConfigError("max_ppl_increase needs eval_windows >= 1 (held-out text to check the gate on).")
        if self.data is None or (isinstance(self.data, (list, tuple)) and not self.data):
            raise CalibrationError("QAT needs training data: pass data='wikitext2', a text/JSONL file or a list of strings.")
        from llmq.calibration import validate_source

        validate_source(self.data)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not isinstance(self.data, (str, Path, type(None))):
            out["data"] = f"<{len(self.data)} strings>"
        return out


#: training objectives, and what the model card says of each
OBJECTIVES = {
    "distill": "distillation from the original model (KL divergence to its next-token distributions)",
    "lm": "language modelling (next-token cross-entropy on the training data)",
}


def base_config(cfg: QATConfig) -> Any:
    """The torchao post-training config QAT fake-quantizes toward and converts with (applied
    directly, with no training, it is the round-to-nearest PTQ baseline of the fair protocol)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, PerAxis, PerGroup

    dtype = {4: torch.int4, 8: torch.int8}[cfg.bits]
    gran = PerAxis(0) if cfg.group_size == -1 else PerGroup(cfg.group_size)
    if cfg.act_bits == 8:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=gran)
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=gran)


def exports_gptq(cfg: QATConfig) -> bool:
    """int4 weight-only QAT is saved as a packed GPTQ folder (GPTQModel's 4-bit kernels); the rest
    as torchao folders."""
    return cfg.bits == 4 and cfg.act_bits is None


def quantizes_embeddings(cfg: QATConfig) -> bool:
    """The torchao exports store the input embedding and ``lm_head`` int8 per row (unless
    ``quantize_embeddings=False``); the GPTQ export cannot hold them and keeps them bf16."""
    return cfg.quantize_embeddings and not exports_gptq(cfg)


def embedding_fake_quant_config() -> Any:
    """Symmetric int8, one scale per row (vocabulary entry): the grid of torchao's
    ``Int8WeightOnlyConfig(PerRow())``, which ``llmq.backends.torchao.quantize_embeddings`` applies at
    export (the dequantized tables are equal; ``tests/test_qat.py`` checks the logits)."""
    import torch
    from torchao.quantization import MappingType, PerAxis
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    return IntxFakeQuantizeConfig(torch.int8, PerAxis(0), MappingType.SYMMETRIC)


def gptq_fake_quant_config(cfg: QATConfig) -> Any:
    """The fake quantizer of a GPTQ-exported scheme: what ``IntxWeightOnlyConfig`` gives (symmetric
    int4, per group), except that scales are rounded to fp16, the precision GPTQ stores, so the
    exported weights equal the trained ones exactly. ``eps`` (the smallest scale) is fp16's
    smallest normal (6.1e-5) so no scale underflows to 0 in fp16 (only groups whose largest
    |weight| is below 4.6e-4 feel it, and they then use less of the int4 range)."""
    import torch
    from torchao.quantization import MappingType, PerAxis, PerGroup
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    gran = PerAxis(0) if cfg.group_size == -1 else PerGroup(cfg.group_size)
    return IntxFakeQuantizeConfig({4: torch.int4, 8: torch.int8}[cfg.bits], gran, MappingType.SYMMETRIC,
                                  scale_precision=torch.float16, eps=torch.finfo(torch.float16).smallest_normal)


_RANK_LAST = {"cpu": 50, "gpu_fits": 50, "gpu_8bit": 50, "gpu_4bit": 50}  # never the advisor's first pick: it trains
_TRAINS = "fine-tunes with fake quantization (needs training text and time; `llmq qat`, or --scheme auto --allow-training)"


class QATBackend(Backend):
    name = "qat"
    requires = (("torchao", "torchao"),)
    extra = "torchao"
    needs_calibration = False
    needs_training = True
    quant_methods = ()  # the output is a GPTQ or torchao folder: the gptqmodel or torchao plugin loads it
    schemes = (
        Scheme("qat-int4", "qat", QATConfig, {"bits": 4, "group_size": 32}, 4,
               "QAT: int4 weights, group 32, symmetric (torchao fake quantization), saved as packed GPTQ", "4",
               f"4-bit weights that win back part of the rounding loss by training, run by GPTQModel's 4-bit "
               f"kernels; {_TRAINS}",
               tree_rank={**_RANK_LAST, "cpu": 51, "gpu_4bit": 49}),
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

    def validate_model(self, source: Any) -> None:
        """Before any weight loads: the GPTQ export's packages, group sizes that divide every
        quantized layer's in_features (torchao's fake quantizer asserts it mid-run otherwise), and
        enough training text for ``steps x batch_size x seqlen`` (tokenizes the text once)."""
        from llmq.errors import MissingDependencyError
        from llmq.quantization_aware import build_data

        if exports_gptq(self.config):
            from llmq.backends.gptqmodel import GPTQModelBackend

            missing = GPTQModelBackend.missing_packages()
            if missing:
                raise MissingDependencyError(f"Scheme {self.scheme.name!r} (saved as GPTQ)", missing, "gptq")
        gs = self.config.group_size
        if gs != -1:
            from llmq.models import excluded_modules, linear_shapes

            shapes = linear_shapes(source.config())
            skip = set(excluded_modules(source.config(), list(shapes), self.config.skip_modules))
            bad = sorted({s[0] for n, s in shapes.items() if n not in skip and ".layers." in f".{n}" and s[0] % gs})
            if bad:
                raise ConfigError(f"group_size={gs} does not divide in_features {bad} of this model's decoder "
                                  "linears; pick a group size that does (--set group_size=...) or -1.")
        build_data(self.config, source.tokenizer())

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        from llmq.quantization_aware import train_model

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
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """GPTQ export (int4 weight-only): GPTQ's packing with bf16 kept tensors, like ``gptq-int4``.
        torchao folders: ``IntxUnpackedToInt8Tensor``, int8 ``qdata`` (4-bit values in int8
        containers), one fp32 scale and one int8 zero point per group (per row for group -1);
        embeddings and a separate lm_head int8 per row (fp32 scale + int8 zero point per row) unless
        ``quantize_embeddings=False``; the rest fp32 (training runs in fp32)."""
        from llmq.advisor.estimate import BYTES, SizeEstimate, base_tensors, header_bytes, kept_params, selected_linears

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
