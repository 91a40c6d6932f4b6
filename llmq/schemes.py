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
from llmq.errors import LlmqError, UnknownNameError
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


NOT_INSTALLED = "not installed"


def support(config: Any, *, trust_remote_code: bool = False) -> dict[str, str | None]:
    """``{scheme: None if it can quantize a model of ``config`` with its defaults, else why not}``,
    from the config alone (no weights): each plugin's ``Backend.unsupported`` and ``misfit``, and the
    packages this install lacks."""
    out: dict[str, str | None] = {}
    for name in SCHEMES.names():
        s = SCHEMES.get(name)
        cls = s.backend_cls()
        if cls.missing_packages():  # its checks may need the package (GGUF: llama.cpp's converter)
            out[name] = f"{NOT_INSTALLED}: pip install 'llmq[{cls.extra or 'all'}]'"
            continue
        b = cls(s, s.config())
        try:
            out[name] = (b.unsupported(config, trust_remote_code=trust_remote_code)
                         or b.misfit(config, trust_remote_code=trust_remote_code))
        except LlmqError as e:  # e.g. the converter needs a newer gguf-py: the fix is in the message
            out[name] = str(e)
        except Exception as e:  # noqa: BLE001 - one scheme's check must not hide the others' answers
            out[name] = f"could not check ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return out


def support_for(model: Any, *, revision: str | None = None, trust_remote_code: bool = False) -> dict[str, str | None]:
    """``support`` for a Hub id, local folder or .gguf (``None``: the demo), from its config alone."""
    from llmq.models import resolve_model

    src = resolve_model(None if model is None else str(model), revision=revision,
                        trust_remote_code=trust_remote_code, weights=False)
    return support(src.config(), trust_remote_code=trust_remote_code)


def alternatives(scheme: Scheme, config: Any, *, trust_remote_code: bool = False) -> str:
    """The schemes at ``scheme``'s precision that can quantize a model of ``config`` (else all that
    can), as a clause for a refusal."""
    ok = [n for n, why in support(config, trust_remote_code=trust_remote_code).items() if why is None and n != scheme.name]
    same = [n for n in ok if SCHEMES.get(n).precision == scheme.precision]
    if not ok:
        return "no scheme in this install can"
    return f"{'schemes at its precision' if same else 'schemes'} that can: {', '.join(same or ok)}"
