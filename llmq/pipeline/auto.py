"""``llmq run --scheme auto``: try the advisor's candidates, most compressed first, keep the first
that passes the accuracy gate, and report every candidate tried.

The rule of thumb is a prior; this is the measurement. Each candidate is quantized, saved to a work
folder beside the output, compared with the original (``llmq.eval.compare``) and judged by
``llmq.eval.gate.check_gate``. The winner's folder becomes the output, with ``auto_report.json``,
``auto_report.md`` and ``auto_report.png`` (size vs quality) in it. If none passes the output holds
only the reports, and the exit code is 1.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from llmq.errors import ConfigError, LlmqError

#: never tried unless named: below the rule of thumb's table (gptq-int3), or dominated by a
#: sibling of the same size (bnb-fp4 by bnb-nf4, fp16 by bf16 on CPU)
NOT_BY_DEFAULT = ("gptq-int3",)
REPORT = "auto_report"


@dataclass
class Trial:
    scheme: str
    estimated_bytes: int
    size_bytes: int | None = None
    passed: bool | None = None
    verdict: str = ""
    checks: list[dict] = field(default_factory=list)
    ppl_increase: float | None = None  # fraction, when the report has perplexity
    score: float | None = None  # worst check value / limit (<= 1 passes); lower is closer
    wall_s: float = 0.0
    trained: bool = False  # a quantization-aware training candidate (tried only with allow_training)
    error: str | None = None
    report: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("report")
        return d


def _as_dict(x: Any) -> dict:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return dict(x)
    return {k: getattr(x, k) for k in dir(x) if not k.startswith("_") and not callable(getattr(x, k))}


def _num(d: dict, *keys: str) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def check_summary(checks: Any) -> tuple[list[dict], float | None, float | None]:
    """(checks as dicts, relative perplexity increase if checked, worst value/limit ratio)."""
    items = list(checks.values()) if isinstance(checks, dict) else list(checks or [])
    out, ppl, worst = [], None, None
    for c in items:
        d = _as_dict(c)
        out.append({k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None)))})
        value, limit = _num(d, "value", "measured", "observed"), _num(d, "limit", "threshold", "max")
        name = str(d.get("name") or d.get("metric") or d.get("check") or "")
        if value is not None and limit:
            r = value / limit
            worst = r if worst is None else max(worst, r)
        if "ppl" in name.lower() or "perplexity" in name.lower():
            ppl = value if ppl is None else ppl
    return out, ppl, worst


def _split_tasks(tasks: Any) -> list[str] | None:
    if tasks is None or isinstance(tasks, (list, tuple)):
        return list(tasks) if tasks else None
    return [t.strip() for t in str(tasks).split(",") if t.strip()] or None


def scheme_overrides(scheme: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The user's scheme options that apply to ``scheme`` (``--group-size`` means nothing to bf16;
    ``--bits`` would turn gptq-int4 into another candidate)."""
    from llmq.schemes import get_scheme

    names = {f.name for f in dataclasses.fields(get_scheme(scheme).config_cls)}
    return {k: v for k, v in overrides.items() if k in names and k != "bits"}


def needs_training(scheme: str) -> bool:
    from llmq.schemes import get_scheme

    return bool(getattr(get_scheme(scheme).backend_cls(), "needs_training", False))


def pick_candidates(advice: Any, budget_gb: float | None, names: list[str] | None = None,
                    training: bool = False) -> list[Any]:
    """Candidates that fit (and the budget), most compressed first: the post-training ones, or
    (``training``) the quantization-aware training ones, which are never tried unless named or
    escalated to."""
    if names:
        known = {c.scheme: c for c in advice.candidates}
        missing = [n for n in names if n not in known]
        if missing:
            from llmq.errors import UnknownNameError

            raise UnknownNameError("candidate scheme", missing[0], known)
        pool = [known[n] for n in names]
    else:
        pool = [c for c in advice.candidates
                if c.fits and c.status not in ("avoid", "exceeds tolerance", "unsupported") and c.scheme not in NOT_BY_DEFAULT
                and needs_training(c.scheme) == training]
    pool = [c for c in pool if c.installed]
    if budget_gb is not None:
        if budget_gb <= 0:
            raise ConfigError(f"--budget-gb must be positive, got {budget_gb}.")
        fit = [c for c in pool if c.size.bytes <= budget_gb * 1e9]
        if not fit:
            smallest = min(pool, key=lambda c: c.size.bytes, default=None)
            hint = f"; the smallest candidate is {smallest.scheme} at {smallest.size.bytes / 1e9:.2f} GB" if smallest else ""
            raise ConfigError(f"No candidate scheme fits --budget-gb {budget_gb:g}{hint}.")
        pool = fit
    if not pool:
        if training:
            return []
        raise ConfigError("No candidate scheme fits this hardware; see `python -m llmq advise`.")
    return sorted(pool, key=lambda c: (c.size.bytes, c.rank))


def run_auto(model: str | os.PathLike | None = None, *, output: str | os.PathLike | None = None,
             overwrite: bool = False, device: str | None = None, revision: str | None = None,
             trust_remote_code: bool = False, overrides: dict[str, Any] | None = None,
             tasks: str | Sequence[str] | None = None, ppl: str | None = None, limit: int | None = None,
             eval_seqlen: int | None = None, max_ppl_increase: Any = None, max_accuracy_loss: float | None = None,
             max_kld: float | None = None, budget_gb: float | None = None,
             candidates: Sequence[str] | None = None, allow_training: bool = False, verify: bool = True) -> int:
    """Quantize, evaluate and gate each candidate (``candidates``, or the advisor's); 0 when one passes
    (its folder becomes ``output``), 1 when none does (``output`` holds only the reports). A candidate
    whose save fails its verification (``llmq.verify``; ``verify=False`` skips it) fails with that line.

    ``allow_training``: when every post-training candidate fails, escalate to quantization-aware
    training (the ``qat-*`` schemes that fit, most compressed first; their ``steps``/``data``/``lr``
    come from ``overrides``). Its training data is checked before the first candidate runs."""
    from llmq.core import quantize
    from llmq.advisor.advice import advise
    from llmq.eval import compare
    from llmq.eval.gate import check_gate, gate_set, validate
    from llmq.io import atomic_dir, check_output
    from llmq.models import folder_size, resolve_model
    from llmq.outdir import default_output, sibling_temp

    if not gate_set(max_ppl_increase, max_accuracy_loss, max_kld):
        raise ConfigError("--scheme auto needs a gate to choose by: --max-ppl-increase, --max-accuracy-loss "
                          "or --max-kld.")
    validate(max_ppl_increase, max_accuracy_loss, max_kld)
    out = Path(output) if output else default_output(model, "auto")
    check_output(out, overwrite)
    names = _split_tasks(candidates)
    adv = advise(model, device=device, revision=revision, trust_remote_code=trust_remote_code)
    pool = pick_candidates(adv, budget_gb, names)
    overrides = dict(overrides or {})
    train_pool = [c for c in pick_candidates(adv, budget_gb, None, training=True)
                  if c.scheme not in {p.scheme for p in pool}] if allow_training else []
    if train_pool:  # the training text (exists, long enough for steps x batch x seqlen) before any weight loads
        from llmq.core import prepare

        prepare(model, train_pool[0].scheme, device=device, revision=revision, trust_remote_code=trust_remote_code,
                **scheme_overrides(train_pool[0].scheme, overrides))
    gate_limits = {"max_ppl_increase": max_ppl_increase, "max_accuracy_loss": max_accuracy_loss, "max_kld": max_kld}

    src = resolve_model(model, revision=revision, trust_remote_code=trust_remote_code)
    original = src.local_dir()
    # named like the save's temp folder, so a killed search's leftovers are removed by the next write
    work = sibling_temp(out)
    print(f"llmq auto: {len(pool)} candidates, most compressed first: {', '.join(c.scheme for c in pool)}", flush=True)
    trials: list[Trial] = []
    winner = None
    try:
        for c in _with_escalation(pool, train_pool, trials):
            t = Trial(c.scheme, c.size.bytes, trained=needs_training(c.scheme))
            trials.append(t)
            t0 = time.perf_counter()
            try:
                qm = quantize(model, c.scheme, device=device, revision=revision,
                                   trust_remote_code=trust_remote_code, **scheme_overrides(c.scheme, overrides))
                path = qm.save(work / c.scheme, verify=verify)
                qm_weights = qm.backend.weight_patterns
                del qm
                t.size_bytes = folder_size(path, qm_weights)
                report = compare(str(original), str(path), ppl=ppl or "wikitext2", tasks=_split_tasks(tasks),
                                 limit=limit, seqlen=eval_seqlen, out_dir=str(work / f"{c.scheme}.eval"),
                                 trust_remote_code=trust_remote_code)
                gate = check_gate(report, **gate_limits)
                t.report = report
                t.passed, t.verdict = bool(gate.passed), str(gate.verdict)
                t.checks, t.ppl_increase, t.score = check_summary(gate.checks)
            except LlmqError as e:
                t.passed, t.error, t.verdict = False, str(e), f"error: {e}"
            except Exception as e:  # noqa: BLE001 - one backend failing must not end the search
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                t.passed, t.error, t.verdict = False, msg, f"error: {msg}"
            t.wall_s = round(time.perf_counter() - t0, 1)
            print(f"  {c.scheme:12s} {_mb(t.size_bytes)}  {'PASS' if t.passed else 'FAIL'}  {t.verdict}", flush=True)
            if t.passed:
                winner = t
                break
        with atomic_dir(out, overwrite=overwrite, inputs=(src.path,)) as tmp:
            if winner is not None:
                for f in (work / winner.scheme).iterdir():
                    shutil.move(str(f), tmp / f.name)
            write_reports(tmp, adv, trials, winner, {**gate_limits, "budget_gb": budget_gb},
                          allow_training=allow_training, training_left=[c.scheme for c in train_pool])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print((out / f"{REPORT}.md").read_text())
    return 0 if winner is not None else 1


def _with_escalation(pool: list[Any], train_pool: list[Any], trials: list[Trial]):
    """The post-training candidates, then (when all of them failed) the training ones."""
    yield from pool
    if train_pool and not any(t.passed for t in trials):
        print(f"llmq auto: every post-training candidate failed the gate; --allow-training: escalating to "
              f"quantization-aware training: {', '.join(c.scheme for c in train_pool)}", flush=True)
        yield from train_pool


def escalation_text(trials: list[Trial], allow_training: bool, training_left: list[str]) -> str:
    """What the advisor says about the training step: why it was taken, or that it is available."""
    trained = [t for t in trials if t.trained]
    ptq = [t for t in trials if not t.trained]
    if trained:
        return (f"Every post-training candidate failed the gate ({', '.join(t.scheme for t in ptq)}), so with "
                f"--allow-training llmq escalated to quantization-aware training: {', '.join(t.scheme for t in trained)} "
                "fine-tuned the model with torchao fake quantization (QAT) on training text, then converted it to "
                "real quantized weights. By default it is trained to reproduce the original model's outputs "
                "(distillation), so what it wins back is quantization loss; with --set objective=lm it also adapts "
                "to the training text's domain: then compare with an fp32 twin (`llmq qat --objective lm "
                "--fp32-twin`) before crediting the quantization.")
    if not allow_training and ptq and not any(t.passed for t in ptq):
        return ("Next step: --allow-training lets llmq escalate to quantization-aware training (the qat-* schemes: "
                "fine-tuning with fake quantization, which needs training text and minutes to hours).")
    if allow_training and not training_left and ptq and not any(t.passed for t in ptq):
        return "--allow-training: no quantization-aware training scheme fits this hardware and budget."
    return ""


def _mb(n: int | None) -> str:
    """Fixed width for the progress lines (``mb`` right-aligned)."""
    from llmq.fmt import mb

    return mb(n or None).rjust(11)


def closest(trials: list[Trial]) -> Trial | None:
    """The failed candidate nearest to passing: smallest worst check/limit ratio."""
    scored = [t for t in trials if t.score is not None]
    return min(scored, key=lambda t: t.score) if scored else None


def pareto(trials: list[Trial]) -> set[str]:
    """Schemes not beaten on both size and perplexity increase by another tried scheme."""
    pts = [t for t in trials if t.size_bytes and t.ppl_increase is not None]
    return {t.scheme for t in pts if not any(
        o is not t and o.size_bytes <= t.size_bytes and o.ppl_increase <= t.ppl_increase
        and (o.size_bytes < t.size_bytes or o.ppl_increase < t.ppl_increase) for o in pts)}


def why(winner: Trial | None, trials: list[Trial]) -> str:
    if winner is None:
        c = closest(trials)
        tail = (f" Closest: {c.scheme} (worst check at {c.score:.2f}x its limit: {c.verdict})." if c else
                " No candidate produced a measurement.")
        return "No candidate passed the gate." + tail
    smaller = [t for t in trials if t is not winner]
    if winner.trained:
        return (f"{winner.scheme} won after escalating to quantization-aware training: it passed the gate "
                f"({winner.verdict}) where every candidate before it failed: "
                + "; ".join(f"{t.scheme}: {t.verdict}" for t in smaller) + ".")
    if not smaller:
        return (f"{winner.scheme} won: it is the most compressed candidate that fits, and it passed the gate "
                f"({winner.verdict}).")
    return (f"{winner.scheme} won: it is the smallest candidate that passed the gate ({winner.verdict}); "
            f"the smaller ones failed: " + "; ".join(f"{t.scheme}: {t.verdict}" for t in smaller) + ".")


def write_reports(folder: Path, adv: Any, trials: list[Trial], winner: Trial | None, gate: dict[str, Any],
                  allow_training: bool = False, training_left: list[str] | None = None) -> None:
    """``auto_report.json``/``.md``/``.png``; ``gate``: the limits (and ``budget_gb``) used."""
    from llmq.io import write_json, write_text

    front = pareto(trials)
    escalation = escalation_text(trials, allow_training, list(training_left or []))
    data = {
        "model": adv.profile.name, "parameters": adv.profile.parameters, "device": adv.hardware.device,
        "gate": gate, "winner": winner.scheme if winner else None, "why": why(winner, trials),
        "allow_training": allow_training, "escalated_to_training": any(t.trained for t in trials),
        "escalation": escalation,
        "closest": (closest(trials).scheme if winner is None and closest(trials) else None),
        "tried": [{**t.to_dict(), "pareto": t.scheme in front} for t in trials],
        "advice": adv.to_dict(),
    }
    write_json(folder / f"{REPORT}.json", data)
    lines = [f"# llmq auto: {adv.profile.name}", "",
             f"Gate: {', '.join(f'{k}={v}' for k, v in gate.items() if v is not None)}. "
             f"Candidates tried most compressed first; the first that passes wins.", "",
             "| scheme | estimated size | actual size | ppl increase | result | Pareto | time |",
             "|---|---|---|---|---|---|---|"]
    for t in trials:
        ppl = f"{t.ppl_increase * 100:+.2f}%" if t.ppl_increase is not None else "n/a"
        res = "PASS" if t.passed else ("ERROR" if t.error else "FAIL")
        lines.append(f"| {t.scheme} | {_mb(t.estimated_bytes).strip()} | {_mb(t.size_bytes).strip()} | {ppl} | "
                     f"{res}: {t.verdict} | {'yes' if t.scheme in front else ''} | {t.wall_s:.0f} s |")
    lines += ["", why(winner, trials), ""] + ([escalation, ""] if escalation else [])
    write_text(folder / f"{REPORT}.md", "\n".join(lines))
    plot(folder / f"{REPORT}.png", trials, front, gate.get("max_ppl_increase"))


def plot(path: Path, trials: list[Trial], front: set[str], limit: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [t for t in trials if t.size_bytes and t.ppl_increase is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in pts:
        ax.scatter(t.size_bytes / 1e6, t.ppl_increase * 100, marker="o" if t.passed else "x",
                   color="tab:green" if t.passed else "tab:red", zorder=3)
        ax.annotate(t.scheme, (t.size_bytes / 1e6, t.ppl_increase * 100), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    fr = sorted((t for t in pts if t.scheme in front), key=lambda t: t.size_bytes)
    if len(fr) > 1:
        ax.plot([t.size_bytes / 1e6 for t in fr], [t.ppl_increase * 100 for t in fr], "--", color="grey",
                label="Pareto front")
    if limit:
        from llmq.config import parse_fraction

        try:
            ax.axhline(parse_fraction(limit, "--max-ppl-increase") * 100, color="tab:orange", ls=":",
                       label="gate")
        except ConfigError:
            pass
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("perplexity increase (%)")
    ax.set_title("llmq auto: size vs quality" + ("" if pts else " (no perplexity measured)"))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
