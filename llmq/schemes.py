"""The plugin registry: one line per scheme plugin (``llmq/backends/*.py``).

Each plugin class declares its schemes, the ``quant_method`` values it loads and its runtime (see
``llmq.backends.base.Backend``). Entries are lazy ``"module:Class"`` strings; plugin modules import
torch and their backend package inside methods only, so ``llmq schemes`` and error messages never
import torch. Adding a scheme: write ``llmq/backends/<name>.py`` and add one ``BACKENDS.register``
line below (or call ``register_plugin(cls)`` from your own code).
"""

from __future__ import annotations

from typing import Any

from llmq.backends.base import Backend, Scheme
from llmq.errors import UnknownNameError
from llmq.registry import Registry

#: plugin name -> "module:Class"; imported on first use only.
BACKENDS: Registry[type[Backend]] = Registry("backend")
BACKENDS.register("cast", "llmq.backends.cast:CastBackend")
BACKENDS.register("torchao", "llmq.backends.torchao:TorchAoBackend")
BACKENDS.register("bitsandbytes", "llmq.backends.bnb:BitsAndBytesBackend")
BACKENDS.register("gptqmodel", "llmq.backends.gptqmodel:GPTQModelBackend")
BACKENDS.register("qat", "llmq.backends.qat.plugin:QATBackend")
BACKENDS.register("gguf", "llmq.backends.gguf.plugin:GGUFBackend")
BACKENDS.register("int8-static", "llmq.backends.int8_static:Int8StaticBackend")
BACKENDS.register("compressed-tensors", "llmq.backends.compressed:CompressedTensorsBackend")
BACKENDS.register("fp8", "llmq.backends.fp8:FP8Backend")

PLUGINS = BACKENDS


_SEEN: set[str] = set()  # plugins whose schemes are in SCHEMES


def _read_plugins() -> None:
    """Put the schemes of every plugin registered so far into ``SCHEMES`` (imports plugin modules,
    which import no heavy package)."""
    for name in BACKENDS.names():
        if name not in _SEEN:
            _SEEN.add(name)
            for s in BACKENDS.get(name).schemes:
                SCHEMES.register(s.name, s)


#: scheme name -> ``Scheme``, read from the plugins when first asked
SCHEMES: Registry[Scheme] = Registry("scheme", before_read=_read_plugins)


def register_plugin(cls: type[Backend]) -> type[Backend]:
    """Register a plugin class (its schemes and quant_methods come with it); usable as a decorator."""
    BACKENDS.register(cls.name, cls)
    SCHEMES.names()  # register its schemes now, so a clash fails here
    return cls


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered at run time (tests)."""
    cls = BACKENDS.get(name)
    for s in cls.schemes:
        SCHEMES.unregister(s.name)
    BACKENDS.unregister(name)
    _SEEN.discard(name)


def get_scheme(name: str) -> Scheme:
    if not isinstance(name, str):
        raise UnknownNameError("scheme", repr(name), SCHEMES.names())
    return SCHEMES.get(name.strip().lower())


def plugin_for_method(quant_method: str | None) -> type[Backend]:
    """The plugin that loads a transformers folder whose ``quantization_config.quant_method`` is
    ``quant_method``; ``Backend`` itself (plain transformers) for an unquantized or unknown one."""
    if quant_method:
        for name in BACKENDS.names():
            cls = BACKENDS.get(name)
            if quant_method in cls.quant_methods:
                return cls
    return Backend


def plugin_recognising(path: Any) -> type[Backend] | None:
    """The plugin whose non-transformers output ``path`` is (e.g. a .gguf file), if any."""
    for name in BACKENDS.names():
        cls = BACKENDS.get(name)
        if cls.recognises(path):
            return cls
    return None


def plugins() -> list[type[Backend]]:
    return [BACKENDS.get(n) for n in BACKENDS.names()]


def plugin_of_folder(path: Any) -> type[Backend]:
    """The plugin that loads (and runs) the output at ``path``: the one that recognises it, else the
    one whose ``quant_method`` its config.json names, else plain transformers (``Backend``)."""
    from pathlib import Path

    from llmq.models import read_json

    path = Path(path).expanduser()
    owner = plugin_recognising(path)
    if owner is not None:
        return owner
    cfg = path / "config.json"
    method = (read_json(cfg).get("quantization_config") or {}).get("quant_method") if cfg.is_file() else None
    return plugin_for_method(method)
