"""Which scheme for this model, on this hardware, at this tolerance; sizes before any download;
and ``--scheme auto``, which measures instead of assuming.

Submodules: ``params`` (parameter counts without weights), ``estimate`` (bytes per scheme),
``rules`` (rule of thumb and decision tree), ``advice`` (``advise``), ``report`` (the "Which
scheme?" section of docs/advisor.md). ``--scheme auto``, which runs the candidates, is a
pipeline (``llmq.pipeline.auto``)
and ``llmq advise`` / ``llmq estimate`` are CLI subcommands (``llmq.cli.advise``): the advisor
reasons about schemes and never imports the pipeline, the core or the evaluator. Everything heavy is
imported inside functions.
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


__getattr__ = lazy_exports(__name__, {
    name: f"llmq.advisor.{module}:{name}" for name, module in {
        "Advice": "advice", "Candidate": "advice", "profile": "params",
        "estimate_scheme": "estimate", "all_estimates": "estimate"}.items()
}, globals())


__all__ = ["advise"]
