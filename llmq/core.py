"""``quantize`` and ``load``: the one call that turns a model id and a scheme into a saved folder.

Everything method-specific is the scheme's plugin's (``llmq/backends/``); this module only runs the steps."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmq import calibration as calib_mod
from llmq.backends.base import Backend, package_version
from llmq.config import CalibratedConfig, SchemeConfig
from llmq.errors import ConfigError, LlmqError, ModelNotFoundError, UnsupportedModelError
from llmq.io import atomic_dir, check_output, write_json
from llmq.meta import META_FILE
from llmq.models import ModelSource, check_no_missing_weights, count_parameters, folder_size, resolve_model
from llmq.schemes import Scheme, get_scheme
from llmq.version import __version__

_CALIB_KEYS = ("calibration", "n_samples", "seqlen", "seed")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class QuantizedModel:
    """A quantized model in memory, with everything needed to save it and describe it honestly."""

    model: Any
    tokenizer: Any
    scheme: Scheme
    config: SchemeConfig
    backend: Backend
    source: ModelSource
    device: str
    wall_time_s: float
    parameters: int
    size_before: int
    calibration: dict | None = None
    saved_to: Path | None = None
    meta: dict = field(default_factory=dict)
    #: ``llmq.verify``'s result for the saved folder (``{"skipped": True, ...}`` with ``verify=False``)
    verification: dict | None = None

    _reloaded: Any = field(default=None, repr=False)

    @property
    def hf_model(self) -> Any:
        """A ``transformers`` model to run. Where the plugin says the model ``quantize`` returned
        cannot run as one (``Backend.runs_in_memory``), the saved folder is loaded instead, saving
        to a temporary one if needed."""
        from llmq.streaming import WrittenOutput

        if self.backend.runs_in_memory and not isinstance(self.model, WrittenOutput):
            return self.model
        if self._reloaded is None:
            if self.saved_to is None:
                import atexit

                from llmq.owners import make_scratch, remove_entry

                tmp = make_scratch("unsaved-model")  # removed at exit; after a kill -9, by the next llmq run
                atexit.register(remove_entry, tmp)
                self.backend.write(self.model, self.tokenizer, tmp)
                path = tmp
            else:
                path = self.saved_to
            self._reloaded, _ = load(path, device=self.device, trust_remote_code=self.source.trust_remote_code)
        return self._reloaded

    def generate(self, prompt: str, max_new_tokens: int = 24) -> str:
        return self.backend.generate(self.hf_model, self.tokenizer, prompt, max_new_tokens)

    def metadata(self, size_after: int | None = None) -> dict:
        import torch
        import transformers

        return {
            "llmq_version": __version__,
            "scheme": self.scheme.name,
            "backend": self.scheme.backend,
            "bits": self.scheme.bits,
            "config": self.config.to_dict(),
            "quantization_config": _jsonable(self.backend.quantization_config(self.model)),
            "source": {
                "name": self.source.name,
                "kind": self.source.kind,
                "base_model": self.source.base_model_id,
                "revision": self.source.revision,
            },
            "calibration": self.calibration,
            "parameters": self.parameters,
            "size_bytes": {"before": self.size_before, "after": size_after},
            "compression_ratio": round(self.size_before / size_after, 3) if size_after else None,
            "wall_time_s": round(self.wall_time_s, 2),
            "device": self.device,
            "versions": {
                "llmq": __version__,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                **self.backend.versions(),
            },
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "verification": self.verification,
            **self.backend.extra_metadata(),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False, verify: bool = True, *,
             format: str | None = None) -> Path:
        """Write the plugin's output and ``llmq.json`` to a temp folder, check that folder against the
        original (``llmq.verify``: KL divergence and top-1 agreement on fixed text, bound by the
        scheme's ``Backend.verify_bound``; ``verify=False`` skips it and says so in ``llmq.json``),
        then rename. An output beyond its bound is not saved to ``path``: it is moved to
        ``<path>.rejected`` (its ``llmq.json`` says why) and ``VerificationError`` is raised.
        ``format``: write this same quantization in another checkpoint format (e.g.
        ``"compressed-tensors"``) where the config allows it (checked first); the config recorded in
        llmq.json names it, and the verification measures the exported folder."""
        from llmq.verify import VerificationError, summary

        if format is not None and format != getattr(self.config, "format", None):
            kept = self.config, self.backend.config
            self.config = self.backend.config = self.config.with_overrides(format=format)
            try:
                return self.save(path, overwrite, verify)
            finally:
                self.config, self.backend.config = kept
        out = Path(path).expanduser()
        with atomic_dir(path, overwrite=overwrite, inputs=(self.source.path,)) as tmp:
            written = self.backend.write(self.model, self.tokenizer, tmp)
            missing = self.backend.missing_files(tmp)
            if missing:
                raise LlmqError(f"The {self.scheme.backend} backend wrote no {' and no '.join(missing)}.")
            self.backend.verify_output(tmp, f"The {self.scheme.name} result")  # e.g. fp16 scales = inf
            self.verification = self._verify(tmp) if verify else {"skipped": True, "reason": "verify=False, --no-verify"}
            self.meta = {**self.metadata(folder_size(tmp, self.backend.weight_patterns)), **written}
            write_json(tmp / META_FILE, self.meta)
            if not self.verification.get("skipped") and not self.verification["passed"]:
                kept = _keep_aside(tmp, out)
                raise VerificationError(f"{summary(self.verification)}. The output was kept at {kept}, not saved "
                                        f"to {out} (--no-verify skips the check).",
                                        self.verification, kept, self.meta)
        self.saved_to = out
        return self.saved_to

    def _verify(self, folder: Path) -> dict:
        from llmq.verify import verify

        original = self.source.path if self.source.kind == "gguf" else self.source.local_dir()  # a .gguf: as it is
        too_big = _too_big_to_compare(Path(original), self.device)
        if too_big:
            return {"skipped": True, "reason": too_big}
        return verify(original, folder, scheme=self.scheme.name,
                      bound=self.backend.verify_bound(self.scheme), device=self.device, tokenizer=self.tokenizer,
                      trust_remote_code=self.source.trust_remote_code)


def _too_big_to_compare(original: Path, device: str) -> str | None:
    """Why the original cannot be run here for the verification (a model streamed because it is
    larger than RAM: loading it whole to compare would be killed for memory), or None. A ``.gguf``
    runs memory-mapped on llama.cpp; a GPU run loads it on the GPU."""
    from llmq import hardware
    from llmq.models import read_json

    if not device.startswith("cpu") or not original.is_dir():
        return None
    cfg = read_json(original / "config.json") if (original / "config.json").is_file() else {}
    saved = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype")
    need = folder_size(original, ("*.safetensors",)) * (2 if saved == "float16" else 1) / hardware.GB  # fp16: fp32 on CPU
    avail = hardware.usable_ram_gb()
    if need <= 0.7 * avail:
        return None
    return (f"the original needs about {need:.1f} GiB of RAM to run and {avail:.1f} GiB is available; compare it on a "
            "larger machine with `llmq compare --original SOURCE --quantized OUTPUT`")


def _keep_aside(tmp: Path, out: Path) -> Path:
    """Move a rejected output to ``<out>.rejected``, replacing only an earlier rejection of llmq's
    (a folder whose ``llmq.json`` records a failed verification); anything else there is kept and a
    numbered name is used instead."""
    import json
    import shutil

    dest = out.with_name(out.name + ".rejected")
    n = 1
    while dest.exists():
        try:
            old = json.loads((dest / META_FILE).read_text())
            ours = (old.get("verification") or {}).get("passed") is False
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            shutil.rmtree(dest)
            break
        n += 1
        dest = out.with_name(f"{out.name}.rejected-{n}")
    os.replace(tmp, dest)
    return dest


def _jsonable(x: Any) -> Any:
    import json

    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))


def prepare(model: str | None, scheme: str, *, device: str | None = None, revision: str | None = None,
            trust_remote_code: bool = False, **overrides: Any) -> tuple[Scheme, SchemeConfig, type, ModelSource, str]:
    """Every check that needs no weights: scheme, options, packages, device, model, shapes."""
    sch = get_scheme(scheme)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not _takes_calibration(sch.config_cls):
        own = {f.name for f in dataclasses.fields(sch.config_cls)}  # e.g. QAT's own seed and seqlen
        given = [k for k in _CALIB_KEYS if k in overrides and k not in own]
        if given:
            raise ConfigError(f"Scheme {sch.name!r} needs no calibration; drop {', '.join(given)}.")
    cfg = sch.config(**overrides)
    backend_cls = sch.backend_cls()
    from llmq import safety

    safety.check_device(device)
    device = device or default_device()
    backend_cls.validate_environment(sch.name, device)
    source = resolve_model(model, revision=revision, trust_remote_code=trust_remote_code)
    source.config()
    try:
        backend_cls(sch, cfg).validate_model(source)
    except UnsupportedModelError as e:
        from llmq.schemes import alternatives

        alt = alternatives(sch, source.config(), trust_remote_code=source.trust_remote_code)
        raise UnsupportedModelError(f"{str(e).rstrip('.')}; {alt} (llmq schemes --model {source.name}).") from None
    if getattr(cfg, "skip_modules", None):
        from llmq.models import linear_shapes

        safety.check_skip_modules(cfg.skip_modules, linear_shapes(source.config(),
                                                                 trust_remote_code=source.trust_remote_code))
    if _takes_calibration(type(cfg)) and cfg.calibration is not None:
        calib_mod.validate_source(cfg.calibration)
    return sch, cfg, backend_cls, source, device


def quantize(model: str | os.PathLike | None, scheme: str, *, device: str | None = None,
             revision: str | None = None, trust_remote_code: bool = False,
             plugin_options: dict[str, Any] | None = None, **overrides: Any) -> QuantizedModel:
    """Quantize ``model`` (Hub id, local folder, ``.gguf`` file; ``None`` = the offline demo model)
    with ``scheme``. ``plugin_options``: run-time settings for the plugin that are not part of the
    result (QAT: ``checkpoint_dir``, ``resume``, ``progress``). Keyword overrides (``bits``,
    ``group_size``, ``skip_modules``, ``calibration``,
    ``n_samples``, ...) go into the scheme's config and are validated before any weight loads."""
    sch, cfg, backend_cls, source, device = prepare(
        None if model is None else str(model), scheme, device=device, revision=revision,
        trust_remote_code=trust_remote_code, **overrides)
    backend = backend_cls(sch, cfg, plugin_options)
    calib = None
    tokenizer = source.tokenizer()
    from llmq import safety

    safety.check_vocab(tokenizer, source.config(), f"The model {source.name}")
    if _takes_calibration(type(cfg)) and cfg.calibration is not None:
        calib = calib_mod.build(cfg.calibration, tokenizer, n_samples=cfg.n_samples, seqlen=cfg.seqlen, seed=cfg.seed)
    model_dir = backend.source_file(source)  # e.g. a .gguf that llama.cpp requantizes as it is
    if model_dir is not None:
        size_before = model_dir.stat().st_size
    else:
        model_dir = source.local_dir()
        check_no_missing_weights(model_dir, source.config(), trust_remote_code=source.trust_remote_code)
        safety.check_finite_safetensors(model_dir, f"The source model {source.name}")
        size_before = folder_size(model_dir)
    t0 = time.perf_counter()
    qmodel = backend.quantize(model_dir, calib, device)
    wall = time.perf_counter() - t0
    return QuantizedModel(
        model=qmodel, tokenizer=tokenizer, scheme=sch, config=cfg, backend=backend, source=source,
        device=device, wall_time_s=wall, parameters=_param_count(source), size_before=size_before,
        calibration=calib.fingerprint if calib else None,
    )


def _takes_calibration(config_cls: type) -> bool:
    """Calibrated schemes, and those where it is optional (a ``calibration`` field, e.g. GGUF's imatrix)."""
    return issubclass(config_cls, CalibratedConfig) or "calibration" in {f.name for f in dataclasses.fields(config_cls)}


def _param_count(source: ModelSource) -> int:
    from llmq.models import meta_model

    return count_parameters(meta_model(source.config(), trust_remote_code=source.trust_remote_code))


def load(path: str | os.PathLike, *, device: str | None = None, dtype: Any = "auto",
         kernel: str | None = None, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load an output written by llmq (or any causal LM folder) as ``(model, tokenizer)``. The plugin
    that owns it loads it: a transformers folder by its ``quantization_config.quant_method`` (GPTQ/AWQ
    folders need ``llmq[gptq]``), another artefact (e.g. a .gguf file) by the plugin that recognises
    it. ``kernel`` picks GPTQModel's kernel for GPTQ/AWQ folders (e.g. ``"marlin"``, ``"torch"``).
    A folder that ships its own modeling code is refused unless ``trust_remote_code``."""
    from llmq.schemes import plugin_of_folder

    path = Path(path).expanduser()
    plugin = plugin_of_folder(path)
    if plugin is Backend and not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not a model folder: it has no config.json.")
    from llmq import safety

    safety.refuse_remote_code(path, trust_remote_code)  # a folder, or the folder beside a .gguf file
    kwargs: dict[str, Any] = {}
    if trust_remote_code:  # only plugins whose runtime can run a folder's own Python take the flag
        import inspect

        if "trust_remote_code" not in inspect.signature(plugin.load).parameters:
            raise ConfigError(f"trust_remote_code does not apply to {plugin.name} outputs ({path}).")
        kwargs["trust_remote_code"] = True
    return plugin.load(path, device=device or default_device(), dtype=dtype, kernel=kernel, **kwargs)



__all__ = ["QuantizedModel", "quantize", "load", "prepare", "check_output", "package_version"]
