"""Which scheme for this model, on this hardware, at this tolerance; sizes before any download;
and ``--scheme auto``, which measures instead of assuming.

Submodules: ``params`` (parameter counts without weights), ``estimate`` (bytes per scheme),
``rules`` (rule of thumb and decision tree), ``advice`` (``advise``), ``auto`` (``run_auto``),
``report`` (the "Which scheme?" section of docs/advisor.md), ``cli`` (``llmq advise`` / ``llmq estimate``).
Everything heavy is imported inside functions.
"""

from __future__ import annotations

from typing import Any

from llmq.registry import lazy_exports


def advise(model: Any = None, **kwargs: Any) -> Any:
    from llmq.advisor.advice import advise as _advise

    return _advise(model, **kwargs)


advise.__doc__ = """Rank every scheme for ``model`` (Hub id, local folder, .gguf, parameter count, or None for
the demo). Keywords: device, gpu_memory_gb, ram_gb, context=2048, batch_size=1, tolerance (0.03 or
"3%"), revision, trust_remote_code. Returns an ``Advice`` (``.to_dict()``, ``.to_markdown()``,
printable with rich)."""


def add_advise(sub: Any) -> None:
    from llmq.advisor.cli import add_advise as _add

    _add(sub)


def add_estimate(sub: Any) -> None:
    from llmq.advisor.cli import add_estimate as _add

    _add(sub)


def run_auto(model: Any = None, **kwargs: Any) -> int:
    from llmq.advisor.auto import run_auto as _run

    return _run(model, **kwargs)


run_auto.__doc__ = """``llmq run --scheme auto``: quantize, evaluate and gate the advisor's candidates (or
``candidates=[...]``), most compressed first; keep the first that passes. Keywords: output, overwrite,
device, revision, trust_remote_code, overrides, tasks, ppl, limit, eval_seqlen, max_ppl_increase,
max_accuracy_loss, max_kld, budget_gb, candidates. Returns 0 when one passes, 1 when none does."""


__getattr__ = lazy_exports(__name__, {
    name: f"llmq.advisor.{module}:{name}" for name, module in {
        "Advice": "advice", "Candidate": "advice", "ModelProfile": "params", "profile": "params",
        "estimate_scheme": "estimate", "all_estimates": "estimate", "SizeEstimate": "estimate"}.items()
}, globals())


__all__ = ["advise", "add_advise", "add_estimate", "run_auto"]
