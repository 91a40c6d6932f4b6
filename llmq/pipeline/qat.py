"""``llmq.qat`` / ``llmq qat``: quantization-aware training as a pipeline. It resolves a QAT scheme
from the registry, runs ``llmq.core.quantize`` with the QAT plugin (which trains, in
``llmq.backends.qat``) and saves the result like ``llmq run``, with a checkpoint folder beside the
output that ``resume`` continues from."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

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


@contextlib.contextmanager
def reserve_training(model: str | os.PathLike | None, output: str | os.PathLike | None, overwrite: bool,
                     ckdir: Path | None, *, resume: bool, settings: dict | None = None) -> Iterator[None]:
    """Everything about where a training run writes, checked and locked before anything loads: the
    output (not the source, writable, replaceable; its lock held through the save, so a second run to
    it fails at once), the checkpoint folder (outside the source and the output, writable, locked),
    and with ``resume`` the checkpoint itself (there, this format, these ``settings``, and for a
    local model folder the same weights). ``llmq run --scheme qat-*`` and ``llmq qat`` both use it."""
    from llmq.backends.qat.train import check_resume
    from llmq.outdir import reserve_output

    if resume and ckdir is None:
        raise ConfigError("--resume needs an output folder or checkpoint_dir to find the checkpoint in.")
    with contextlib.ExitStack() as stack:
        if output is not None:
            stack.enter_context(reserve_output(output, overwrite=overwrite, inputs=[model]))
        if ckdir is not None:
            if output is not None:  # the save replaces the output as a whole: the checkpoint stays outside it
                o, c = (Path(os.path.realpath(Path(x).expanduser())) for x in (output, ckdir))
                if c == o or o in c.parents or c in o.parents:
                    raise ConfigError(f"The checkpoint folder {ckdir} and the output {output} must not be the same "
                                      "or inside one another; choose another --checkpoint-dir.")
            stack.enter_context(reserve_output(ckdir, overwrite=True, inputs=[model]))
        if resume:
            weights = None
            if model is not None and Path(str(model)).expanduser().is_dir():
                from llmq.models import weights_fingerprint

                weights = weights_fingerprint(Path(str(model)).expanduser())
            check_resume(ckdir, config=settings, weights_sha256=weights)
        yield


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
    ``.<output>.qat-checkpoint``); ``resume=True`` continues from it. All inputs, the output and the
    checkpoint are checked (and the output locked) before any weight loads (``reserve_training``)."""
    from llmq.backends.qat.train import fingerprint
    from llmq.core import quantize

    name = qat_scheme_name(scheme)
    from llmq.backends.qat.config import QATConfig

    check_twin(options.get("objective", QATConfig.objective), fake_quant)
    if not fake_quant and options.get("format"):
        raise ConfigError("the fp32 twin is not quantized: it has no compressed-tensors form; drop format.")
    overrides = {k: v for k, v in dict(data=data, steps=steps, lr=lr, seed=seed, **options).items() if v is not None}
    settings = fingerprint(qat_config(name, **overrides), fake_quant)  # validates the options, too
    ckdir = Path(checkpoint_dir).expanduser() if checkpoint_dir else (
        default_checkpoint_dir(output) if output is not None else None)
    with reserve_training(model, output, overwrite, ckdir, resume=resume, settings=settings):
        qm = quantize(None if model is None else str(model), name, device=device, revision=revision,
                      trust_remote_code=trust_remote_code,
                      plugin_options={"checkpoint_dir": ckdir, "resume": resume, "progress": progress,
                                      "fake_quant": fake_quant, "source_name": str(model) if model else None},
                      **overrides)
        if output is not None:
            qm.save(output, overwrite=overwrite)
            if ckdir is not None and ckdir == default_checkpoint_dir(output):
                shutil.rmtree(ckdir, ignore_errors=True)  # the finished model replaces the checkpoint
    return qm


__all__ = ["qat", "qat_config", "qat_scheme_name", "qat_schemes", "default_checkpoint_dir", "reserve_training",
           "ALIASES"]
