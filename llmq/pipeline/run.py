"""``llmq run`` as a library call: quantize (a named scheme, or ``"auto"``: the advisor's candidates,
measured), save, a sample generation, evaluation and gate, push. One pipeline for both: the CLI only
parses its flags and calls ``run``."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from llmq.errors import ConfigError, LlmqError

#: With no model: the demo model, and the scheme the advisor picks for a CPU (int8-dynamic, seconds).
#: A scheme that calibrates or trains on text gets Python's bundled docs (offline) and a small budget
#: (16 x 256 calibration tokens; 10 QAT steps of 2 x 128, a 16th and a 10th of the defaults), so every
#: scheme's demo finishes in minutes on a 2-core CPU (awq-int4 266 s, ``scripts/bench_demo.py``,
#: ``eval/bench_demo.json``); one whose default groups do not
#: split SmolLM2's 576-wide layers (GPTQ/AWQ's 128) gets groups of 64; each only where the scheme's
#: config has that field (``demo_overrides``). ``scripts/bench_demo.py`` runs every CPU scheme so.
DEMO = {"scheme": "int8-dynamic", "group_size": 64, "calibration": "builtin"}
DEMO_CALIBRATION = {"n_samples": 16, "seqlen": 256}
DEMO_TRAINING = {"steps": 10, "batch_size": 2, "seqlen": 128, "warmup_steps": 1}
DEMO_WIDTH = 576  # SmolLM2-135M's hidden size: the in_features a group size must divide
SAMPLE_PROMPT = "The capital of France is"


@dataclass
class RunResult:
    #: the saved model folder; None when ``--scheme auto`` found no candidate that passes (the output
    #: folder then holds only the auto reports)
    path: Path | None
    output: Path
    scheme: str | None  # the scheme saved (the winner, for "auto")
    code: int  # 0: done (and the gate passed); 1: the gate failed / no candidate passed
    meta: dict | None = None
    sample: str | None = None
    report: dict | None = None  # the evaluation report, when evaluated
    push: Any = None  # llmq.publish.PushResult, when pushed
    notes: list[str] = field(default_factory=list)
    #: ``llmq.verify``'s result for the saved output (``llmq.json``'s ``verification``)
    verification: dict | None = None
    #: where a rejected output was kept (its verification failed: code 1, nothing saved to ``output``, no push)
    rejected: Path | None = None


def run(model: str | os.PathLike | None = None, scheme: str | None = None, *, output: str | os.PathLike | None = None,
        overwrite: bool = False, device: str | None = None, revision: str | None = None,
        trust_remote_code: bool = False, overrides: dict[str, Any] | None = None, evaluate: bool = False,
        tasks: str | Sequence[str] | None = None, ppl: str | None = None, limit: int | None = None,
        eval_seqlen: int | None = None, max_ppl_increase: Any = None, max_accuracy_loss: float | None = None,
        max_kld: float | None = None, budget_gb: float | None = None, candidates: Sequence[str] | None = None,
        push_to_hub: str | None = None, private: bool = False, sample: bool = True, allow_training: bool = False,
        resume: bool = False, verify: bool = True, memory_check: bool = True,
        on_saved: Callable[[dict, Path, str | None], None] | None = None,
        on_report: Callable[[dict, Path], None] | None = None) -> RunResult:
    """Quantize ``model`` (None: the offline demo) with ``scheme`` (a name from ``llmq schemes``, or
    ``"auto"``), save it to ``output``, generate a sample, evaluate it against the original when
    ``evaluate`` or a gate (``max_ppl_increase``, ``max_accuracy_loss``, ``max_kld``) is given, and
    push it to ``push_to_hub``. ``on_saved(meta, path, sample)`` and ``on_report(report, path)`` are
    called as soon as each step is done (the CLI prints there). ``allow_training``: with ``"auto"``,
    escalate to quantization-aware training (``qat-*``) when every post-training candidate fails.
    A named ``qat-*`` scheme checkpoints its training next to ``output`` (``.<name>.qat-checkpoint``,
    every ``checkpoint_every`` steps, removed once the model is saved); ``resume`` continues from it.
    ``verify``: check the saved output against the original (``llmq.verify``) before anything else;
    beyond its scheme's bound the output is kept at ``<output>.rejected`` and the result has code 1,
    no path, no sample, no evaluation and no push (``verify=False``: ``--no-verify``).
    On CPU, a named scheme's projected peak RAM and wall time are stated before any weight loads
    (``llmq.pipeline.resources``), and a job projected not to fit is refused unless not ``memory_check``."""
    from llmq import safety
    from llmq.eval.api import check_eval_request
    from llmq.eval.gate import gate_set
    from llmq.hub import check_repo_id
    from llmq.outdir import default_output, reserve_output

    overrides = dict(overrides or {})
    gated = gate_set(max_ppl_increase, max_accuracy_loss, max_kld)
    demo = not model
    # What runs after quantizing (push, evaluation, gate) is checked before the first weight loads.
    check_repo_id(push_to_hub)
    if evaluate or gated:
        check_eval_request(tasks=tasks, ppl=ppl, max_ppl_increase=max_ppl_increase,
                           max_accuracy_loss=max_accuracy_loss, max_kld=max_kld)
        safety.check_eval_options(limit=limit, seqlen=eval_seqlen)
    if scheme == "auto":
        if resume:
            raise ConfigError("--resume continues a named qat-* scheme's training; --scheme auto does not checkpoint.")
        from llmq.pipeline.auto import run_auto

        out = Path(output) if output else default_output(model, "auto")
        # The output is checked and locked from here until the winner is saved: a second writer of
        # the same output fails now, and the source can never be the output.
        with reserve_output(out, overwrite=overwrite, inputs=[model]):
            code = run_auto(model, output=out, overwrite=overwrite, device=device, revision=revision,
                            trust_remote_code=trust_remote_code, overrides=overrides, tasks=tasks, ppl=ppl,
                            limit=limit, eval_seqlen=eval_seqlen, max_ppl_increase=max_ppl_increase,
                            max_accuracy_loss=max_accuracy_loss, max_kld=max_kld, budget_gb=budget_gb,
                            candidates=candidates, allow_training=allow_training, verify=verify)
        from llmq.meta import read_meta

        meta = read_meta(out) if code == 0 else None
        res = RunResult(out if meta else None, out, meta["scheme"] if meta else None, code, meta,
                        verification=(meta or {}).get("verification"))
        if meta and sample:
            from llmq.core import load
            from llmq.schemes import plugin_of_folder

            m, tok = load(out, device=device, trust_remote_code=trust_remote_code)
            res.sample = _one_line(plugin_of_folder(out).generate(m, tok, SAMPLE_PROMPT, max_new_tokens=16))
            del m
        if meta and on_saved:
            on_saved(meta, out, res.sample)
    else:
        if demo:
            scheme = scheme or DEMO["scheme"]
            for k, v in demo_overrides(scheme).items():
                overrides.setdefault(k, v)
        if not scheme:
            raise LlmqError("--scheme is required with --model (see `python -m llmq schemes`, or use --scheme auto).")
        out = Path(output) if output else default_output(model, scheme)
        from llmq.core import prepare, quantize
        from llmq.schemes import get_scheme

        ckdir = training = None
        if get_scheme(scheme).backend_cls().needs_training:
            from llmq.backends.qat.train import fingerprint
            from llmq.pipeline.qat import default_checkpoint_dir, reserve_training

            ckdir = default_checkpoint_dir(out)
            cfg = get_scheme(scheme).config(**{k: v for k, v in overrides.items() if v is not None})
            # output and checkpoint checked and locked, the checkpoint matched with --resume, before training
            training = reserve_training(model, None, overwrite, ckdir, resume=resume,
                                        settings=fingerprint(cfg, True))
        elif resume:
            raise ConfigError(f"--resume continues quantization-aware training (qat-* schemes); {scheme!r} does not train.")

        # The output is checked (exists, is/contains/is inside the source, writable) and locked from
        # here through the save: a second `run` to the same output fails before it loads a weight.
        with reserve_output(out, overwrite=overwrite, inputs=[model]), training or contextlib.nullcontext():
            # Every cheap check first (scheme, options, packages, model config, group sizes, calibration file).
            sch, cfg, backend_cls, source, dev = prepare(model, scheme, device=device, revision=revision,
                                                         trust_remote_code=trust_remote_code, **overrides)
            from llmq.pipeline.resources import NotEnoughMemory, check_resources

            try:
                check_resources(source, sch, cfg, backend_cls, dev)
            except NotEnoughMemory:
                if memory_check:
                    raise
            options = ({"checkpoint_dir": ckdir, "resume": resume, "source_name": str(model) if model else None}
                       if ckdir else {"work_dir": out.parent})
            try:
                qm = quantize(model, scheme, device=device, revision=revision, trust_remote_code=trust_remote_code,
                              plugin_options=options, **overrides)
            except OSError as e:  # a streaming plugin writes its shards beside the output while quantizing
                from llmq.errors import note_path

                note_path(e, out)
                raise
            from llmq.verify import VerificationError

            try:
                path = qm.save(out, overwrite=overwrite, verify=verify)
            except VerificationError as e:  # kept aside (the QAT checkpoint too): nothing saved, nothing pushed
                return RunResult(None, out, qm.scheme.name, 1, e.meta, notes=[str(e)], verification=e.result,
                                 rejected=e.path)
            if ckdir is not None:
                shutil.rmtree(ckdir, ignore_errors=True)  # the saved model replaces the checkpoint
        if sample:
            from llmq.pipeline.resources import fits_to_load

            sample = fits_to_load(path, qm.backend)
        text = _one_line(qm.generate(SAMPLE_PROMPT, max_new_tokens=16)) if sample else None
        res = RunResult(path, out, qm.scheme.name, 0, qm.meta, text, verification=qm.verification)
        del qm
        if on_saved:
            on_saved(res.meta, path, text)
        if evaluate or gated:
            from llmq.eval.api import assess, original_of

            res.report = assess(str(path), reference=original_of(path), ppl=ppl or "wikitext2", tasks=tasks,
                                limit=limit, seqlen=eval_seqlen or 2048, out_dir=path, device=device,
                                max_ppl_increase=max_ppl_increase, max_accuracy_loss=max_accuracy_loss,
                                max_kld=max_kld, trust_remote_code=trust_remote_code,
                                note=lambda t: print(t, file=sys.stderr, flush=True))
            if on_report:
                on_report(res.report, path)
            gate = res.report.get("gate")
            res.code = 0 if not gate or gate["passed"] else 1
    if push_to_hub and res.path is not None:
        from llmq.publish import push

        res.push = push(res.path, repo_id=push_to_hub, private=private)
    return res


def demo_overrides(scheme: str) -> dict[str, Any]:
    """The offline demo's settings for ``scheme``, per field its config has: text and a small budget
    for the fields a calibrating or training scheme reads (``calibration``, QAT's ``data``), and ``group_size=64``
    where the default group does not divide the demo's layers. Nothing for the others: int8-static's
    per-channel ``group_size=-1`` and GGUF's optional importance matrix stay as they are."""
    from llmq.schemes import get_scheme

    sch = get_scheme(scheme)
    plugin = sch.backend_cls()
    cfg = sch.config()
    out: dict[str, Any] = {}
    if plugin.needs_calibration and hasattr(cfg, "calibration"):
        out["calibration"] = DEMO["calibration"]
        out.update({k: v for k, v in DEMO_CALIBRATION.items() if hasattr(cfg, k)})
    if plugin.needs_training and hasattr(cfg, "data"):
        out["data"] = DEMO["calibration"]
        out.update({k: v for k, v in DEMO_TRAINING.items() if hasattr(cfg, k)})
    gs = getattr(cfg, "group_size", None)
    if isinstance(gs, int) and gs > 0 and DEMO_WIDTH % gs:
        out["group_size"] = DEMO["group_size"]
    return out


def _one_line(text: str) -> str:
    return text.strip().replace("\n", " ")
