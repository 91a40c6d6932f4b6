"""The QAT scheme's config and the torchao base configs it trains and exports with (see
``llmq.backends.qat.plugin`` for the two export formats and why Intx base configs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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

    #: qat-int4 (int4 weight-only, saved as GPTQ) can be written as compressed-tensors W4A16
    formats: ClassVar[tuple[str, ...]] = ("compressed-tensors",)
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
        from llmq.config import parse_increase

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
        if self.format == "compressed-tensors" and not exports_gptq(self):
            raise ConfigError("format='compressed-tensors' is written from qat-int4's GPTQ folder (int4 weight-only); "
                              "the torchao QAT schemes keep torchao's format.")
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
    export (the dequantized tables are equal; ``tests/pipeline/test_qat.py`` checks the logits)."""
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
