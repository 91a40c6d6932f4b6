"""Evaluation: what quantization cost, measured the way the field measures it.

``evaluate`` (one model, optionally against a reference) and ``compare`` (original vs quantized,
writing report.json/.md/.png) are imported lazily so that ``llmq.eval.cli`` stays torch-free."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'llmq.eval' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
