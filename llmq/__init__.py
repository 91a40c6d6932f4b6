"""llmq: quantize a Hugging Face causal LM, measure what it cost, publish the result.

The public surface is a few functions (quantize, evaluate, advise, bench, load, push, qat). They
are imported lazily (module ``__getattr__``, as lm-evaluation-harness does) so that ``import llmq``
stays cheap and never pulls in torch or a quantization backend until one is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmq.registry import lazy_exports

from llmq.version import __version__

_LAZY = {
    "quantize": "llmq.core:quantize",
    "load": "llmq.core:load",
    "QuantizedModel": "llmq.core:QuantizedModel",
    "evaluate": "llmq.eval:evaluate",
    "advise": "llmq.advisor:advise",
    "bench": "llmq.benchmark:bench",
    "push": "llmq.publish:push",
    "qat": "llmq.pipeline.qat:qat",
    "LlmqError": "llmq.errors:LlmqError",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from llmq.advisor import advise
    from llmq.benchmark import bench
    from llmq.errors import LlmqError
    from llmq.eval import evaluate
    from llmq.publish import push
    from llmq.core import QuantizedModel, load, quantize


__getattr__ = lazy_exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
