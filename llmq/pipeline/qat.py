"""``llmq.qat`` / ``llmq qat``: quantization-aware training as a pipeline. It resolves a QAT scheme
from the registry, runs ``llmq.core.quantize`` with the QAT plugin (which trains, in
``llmq.backends.qat``) and saves the result like ``llmq run``, with a checkpoint folder beside the
output that ``resume`` continues from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from llmq.backends.qat.train import check_twin
from llmq.errors import ConfigError, UnknownNameError

#: llmq scheme names QAT can target, mapped to the QAT scheme that produces the same format
ALIASES = {"int4": "qat-int4", "8da4w": "qat-8da4w", "w8a8": "qat-w8a8", "int8": "qat-int8",
           "int8-dynamic": "qat-w8a8"}


def qat_schemes() -> list[str]:
    from llmq.schemes import SCHEMES

    return [n for n in SCHEMES if SCHEMES.get(n).backend_cls().needs_training]


def qat_scheme_name(name: str) -> str:
    """``name`` as a QAT scheme (``int8-dynamic`` -> ``qat-w8a8``); a scheme QAT cannot produce is a
    one-line error."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    names = qat_schemes()
    if key not in names:
        raise UnknownNameError("QAT scheme", name, names)
    return key


def qat_config(name: str, **overrides: Any) -> Any:
    """The ``QATConfig`` of a QAT scheme with ``overrides`` applied and validated."""
    from llmq.schemes import get_scheme

    return get_scheme(qat_scheme_name(name)).config(**overrides)


def default_checkpoint_dir(output: str | os.PathLike) -> Path:
    out = Path(output).expanduser()
    return out.with_name(f".{out.name}.qat-checkpoint")


def qat(model: str | os.PathLike | None, scheme: str = "qat-int4", *, data: Any = "wikitext2", steps: int = 100,
        lr: float = 1e-5, seed: int = 0, output: str | os.PathLike | None = None, overwrite: bool = False,
        resume: bool = False, checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
        fake_quant: bool = True, device: str | None = None, revision: str | None = None,
        trust_remote_code: bool = False, **options: Any) -> Any:
    """Fine-tune ``model`` with torchao fake quantization for ``scheme`` (``qat-int4``, ``qat-8da4w``,
    ``qat-w8a8``, ``qat-int8``, or the PTQ name it mirrors: ``int8-dynamic`` -> ``qat-w8a8``) on
    ``data``, convert it to real torchao quantized weights and (with ``output``) save it like
    ``llmq run`` does. Returns ``llmq.QuantizedModel``; its ``backend.training`` holds the facts.

    ``options`` are ``QATConfig`` fields (``objective``, ``batch_size``, ``seqlen``, ``warmup_steps``,
    ``checkpoint_every``, ``max_ppl_increase``, ...). ``fake_quant=False`` trains the fp32 twin
    (``objective="lm"`` only: a distilled twin is the original).
    A checkpoint is written every ``checkpoint_every`` steps (to ``checkpoint_dir``, default
    ``.<output>.qat-checkpoint``); ``resume=True`` continues from it. All inputs are checked before
    any weight loads."""
    from llmq.core import quantize
    from llmq.io import check_output

    name = qat_scheme_name(scheme)
    from llmq.backends.qat.config import QATConfig

    check_twin(options.get("objective", QATConfig.objective), fake_quant)  # the config itself is validated by quantize
    if not fake_quant and options.get("format"):
        raise ConfigError("the fp32 twin is not quantized: it has no compressed-tensors form; drop format.")
    if output is not None and not resume:
        check_output(output, overwrite)
    ckdir = Path(checkpoint_dir).expanduser() if checkpoint_dir else (
        default_checkpoint_dir(output) if output is not None else None)
    if resume and ckdir is None:
        raise ConfigError("--resume needs an output folder or checkpoint_dir to find the checkpoint in.")
    qm = quantize(None if model is None else str(model), name, device=device, revision=revision,
                  trust_remote_code=trust_remote_code,
                  plugin_options={"checkpoint_dir": ckdir, "resume": resume, "progress": progress,
                                  "fake_quant": fake_quant},
                  data=data, steps=steps, lr=lr, seed=seed, **options)
    if output is not None:
        qm.save(output, overwrite=overwrite or resume)
        if ckdir is not None and ckdir == default_checkpoint_dir(output):
            shutil.rmtree(ckdir, ignore_errors=True)  # the finished model replaces the checkpoint
    return qm


__all__ = ["qat", "qat_config", "qat_scheme_name", "qat_schemes", "default_checkpoint_dir", "ALIASES"]
