"""What a model keeps its weight matrices in, read from its config alone (meta device, no weights):
the plugins' ``layer_types`` check (a ``Conv1D`` model refused by a ``nn.Linear``-only scheme) and
the block shapes GPTQ, AWQ and QAT need (group sizes that divide every input width)."""

from __future__ import annotations

import re
from typing import Any


def model_type(config: Any) -> str:
    """The model's class name as users see it (``GPT2LMHeadModel``), else its ``model_type``."""
    archs = getattr(config, "architectures", None) or []
    return archs[0] if archs else str(getattr(config, "model_type", "this model"))


_SHAPES: dict[str, dict[str, tuple[str, int, int]]] = {}
#: a module inside a decoder block: ``model.layers.3.``, ``transformer.h.0.``, ``model.decoder.layers.1.``
BLOCK = re.compile(r"(^|\.)(layers|h|blocks)\.\d+\.")


def weight_shapes(config: Any, *, trust_remote_code: bool = False) -> dict[str, tuple[str, int, int]]:
    """``{module name: (layer class, in_features, out_features)}`` for every module holding one of
    the model's weight matrices, the embeddings and the output head aside ("Linear" for
    ``torch.nn.Linear`` and its subclasses; transformers' ``Conv1D`` stores its weight transposed),
    from the config alone (meta device, no weights); cached per config."""
    key = config.to_json_string(use_diff=False)
    if key not in _SHAPES:
        from torch import nn

        from llmq.models import meta_model

        model = meta_model(config, trust_remote_code=trust_remote_code)
        head = model.get_output_embeddings()
        found: dict[str, tuple[str, int, int]] = {}
        for name, mod in model.named_modules():
            w = mod._parameters.get("weight")
            if w is None or w.dim() != 2 or isinstance(mod, nn.Embedding) or mod is head:
                continue
            kind = "Linear" if isinstance(mod, nn.Linear) else type(mod).__name__
            o, i = w.shape if kind != "Conv1D" else w.shape[::-1]
            found[name] = (kind, int(i), int(o))
        _SHAPES[key] = found
    return _SHAPES[key]


def weight_layer_types(config: Any, *, trust_remote_code: bool = False) -> dict[str, list[str]]:
    """``{layer class: [module names]}`` of ``weight_shapes``."""
    out: dict[str, list[str]] = {}
    for name, (kind, _, _) in weight_shapes(config, trust_remote_code=trust_remote_code).items():
        out.setdefault(kind, []).append(name)
    return out


def block_shapes(config: Any, skip: tuple[str, ...] = (), *, trust_remote_code: bool = False
                 ) -> dict[str, tuple[int, int]]:
    """``{name: (in_features, out_features)}`` of the weight layers inside the decoder blocks (what
    GPTQ, AWQ and QAT quantize), less ``skip`` (names or patterns, as ``skip_modules``)."""
    from llmq.models import excluded_modules

    shapes = {n: (i, o) for n, (_, i, o) in weight_shapes(config, trust_remote_code=trust_remote_code).items()
              if BLOCK.search(n)}
    kept = set(excluded_modules(config, list(shapes), tuple(skip))) if skip else set()
    return {n: s for n, s in shapes.items() if n not in kept}
