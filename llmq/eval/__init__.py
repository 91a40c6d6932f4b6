"""Evaluation: what quantization cost, measured the way the field measures it.

``evaluate`` (one model, optionally against a reference) and ``compare`` (original vs quantized,
writing report.json/.md/.png) are imported lazily so that ``llmq.cli.eval`` stays torch-free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmq.registry import lazy_exports

_LAZY = {
    "evaluate": "llmq.eval.api:evaluate",
    "compare": "llmq.eval.api:compare",
    "EvalReport": "llmq.eval.api:EvalReport",
    "check_gate": "llmq.eval.gate:check_gate",
    "GateResult": "llmq.eval.gate:GateResult",
}
__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from llmq.eval.api import EvalReport, compare, evaluate
    from llmq.eval.gate import GateResult, check_gate


__getattr__ = lazy_exports(__name__, _LAZY, globals())
