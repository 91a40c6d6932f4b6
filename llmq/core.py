"""``quantize`` and ``load``: the one call that turns a model id and a scheme into a saved folder."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmq
from llmq import calibration as calib_mod
from llmq.backends.base import Backend, package_version
from llmq.config import CalibratedConfig, SchemeConfig
from llmq.errors import ConfigError, LlmqError, MissingDependencyError, ModelNotFoundError
from llmq.io import atomic_dir, check_output, write_json
from llmq.models import ModelSource, count_parameters, folder_size, read_json, resolve_model
from llmq.schemes import Scheme, get_scheme

META_FILE = "llmq.json"
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

    _reloaded: Any = field(default=None, repr=False)

    @property
    def hf_model(self) -> Any:
        """A ``transformers`` model to run. GPTQModel's in-memory model right after ``quantize`` is
        not in an inference state on CPU (it generated garbage where the saved folder, reloaded,
        answers correctly), so GPTQ/AWQ models run from the saved folder, saving to a temporary one
        if needed."""
        if self.scheme.backend != "gptqmodel":
            return self.model
        if self._reloaded is None:
            if self.saved_to is None:
                import atexit
                import shutil
                import tempfile

                tmp = Path(tempfile.mkdtemp(prefix="llmq-"))
                atexit.register(shutil.rmtree, tmp, True)
                self.backend.save(self.model, tmp)
                self.tokenizer.save_pretrained(tmp)
                path = tmp
            else:
                path = self.saved_to
            self._reloaded, _ = load(path, device=self.device)
        return self._reloaded

    def generate(self, prompt: str, max_new_tokens: int = 24) -> str:
        import torch

        model = self.hf_model
        enc = self.tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def metadata(self, size_after: int | None = None) -> dict:
        import torch
        import transformers

        return {
            "llmq_version": llmq.__version__,
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
                "llmq": llmq.__version__,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                **self.backend.versions(),
            },
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write config, safetensors, tokenizer and ``llmq.json`` to a temp folder, then rename."""
        if not self.backend.serializable:
            raise ConfigError(f"Scheme {self.scheme.name!r} cannot be saved.")
        with atomic_dir(path, overwrite=overwrite) as tmp:
            self.backend.save(self.model, tmp)
            self.tokenizer.save_pretrained(tmp)
            if not list(tmp.glob("*.safetensors")):
                raise LlmqError(f"The {self.scheme.backend} backend wrote no safetensors weights.")
            for f in tmp.glob("*.bin"):
                f.unlink()
            self.meta = self.metadata(folder_size(tmp))
            write_json(tmp / META_FILE, self.meta)
        self.saved_to = Path(path).expanduser()
        return self.saved_to


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
    if not issubclass(sch.config_cls, CalibratedConfig):
        given = [k for k in _CALIB_KEYS if k in overrides]
        if given:
            raise ConfigError(f"Scheme {sch.name!r} needs no calibration; drop {', '.join(given)}.")
    cfg = sch.config(**overrides)
    backend_cls = sch.backend_cls()
    device = device or default_device()
    backend_cls.validate_environment(sch.name, device)
    source = resolve_model(model, revision=revision, trust_remote_code=trust_remote_code)
    source.config()
    backend_cls(sch, cfg).validate_model(source)
    if isinstance(cfg, CalibratedConfig):
        calib_mod.validate_source(cfg.calibration)
    return sch, cfg, backend_cls, source, device


def quantize(model: str | os.PathLike | None, scheme: str, *, device: str | None = None,
             revision: str | None = None, trust_remote_code: bool = False, **overrides: Any) -> QuantizedModel:
    """Quantize ``model`` (Hub id, local folder, ``.gguf`` file; ``None`` = the offline demo model)
    with ``scheme``. Keyword overrides (``bits``, ``group_size``, ``skip_modules``, ``calibration``,
    ``n_samples``, ...) go into the scheme's config and are validated before any weight loads."""
    sch, cfg, backend_cls, source, device = prepare(
        None if model is None else str(model), scheme, device=device, revision=revision,
        trust_remote_code=trust_remote_code, **overrides)
    backend = backend_cls(sch, cfg)
    calib = None
    tokenizer = source.tokenizer()
    if isinstance(cfg, CalibratedConfig):
        calib = calib_mod.build(cfg.calibration, tokenizer, n_samples=cfg.n_samples, seqlen=cfg.seqlen, seed=cfg.seed)
    model_dir = source.local_dir()
    size_before = folder_size(model_dir)
    t0 = time.perf_counter()
    qmodel = backend.quantize(model_dir, calib, device)
    wall = time.perf_counter() - t0
    return QuantizedModel(
        model=qmodel, tokenizer=tokenizer, scheme=sch, config=cfg, backend=backend, source=source,
        device=device, wall_time_s=wall, parameters=_param_count(source), size_before=size_before,
        calibration=calib.fingerprint if calib else None,
    )


def _param_count(source: ModelSource) -> int:
    from llmq.models import meta_model

    return count_parameters(meta_model(source.config(), trust_remote_code=source.trust_remote_code))


def load(path: str | os.PathLike, *, device: str | None = None, dtype: Any = "auto",
         kernel: str | None = None) -> tuple[Any, Any]:
    """Load a folder written by llmq (or any causal LM folder) as ``(model, tokenizer)`` with plain
    transformers; GPTQ/AWQ folders need ``llmq[gptq]`` installed. ``kernel`` picks GPTQModel's
    kernel for GPTQ/AWQ folders (e.g. ``"marlin"``, ``"triton"``, ``"torch"``; default ``auto``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not a model folder: it has no config.json.")
    cfg = read_json(path / "config.json")
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    if method in ("gptq", "awq"):
        from llmq.backends.gptqmodel import GPTQModelBackend, ensure_cpu_workers

        missing = GPTQModelBackend.missing_packages()
        if missing:
            raise MissingDependencyError(f"Loading a {method.upper()} model", missing, "gptq")
        ensure_cpu_workers()
    elif method == "bitsandbytes":
        from llmq.backends.bnb import BitsAndBytesBackend

        if BitsAndBytesBackend.missing_packages():
            raise MissingDependencyError("Loading a bitsandbytes model", ["bitsandbytes"], "bnb")
    elif method == "torchao":
        from llmq.backends.torchao import TorchAoBackend

        if TorchAoBackend.missing_packages():
            raise MissingDependencyError("Loading a torchao model", ["torchao"], "torchao")
        from llmq.backends.int8_static import enable_loading

        enable_loading()  # int8-static's activation scales (transformers 5.24 omits their names)
    device = device or default_device()
    kwargs: dict[str, Any] = {}
    if kernel is None and method == "gptq":
        kernel = _offline_safe_gptq_kernel(cfg["quantization_config"], device)
    if kernel is not None:
        if method not in ("gptq", "awq"):
            raise ConfigError(f"kernel= applies to GPTQ/AWQ folders; {path} is {method or 'not quantized'}.")
        from transformers import AwqConfig, GPTQConfig

        qc = dict(cfg["quantization_config"])
        cls = GPTQConfig if method == "gptq" else AwqConfig
        kwargs["quantization_config"] = cls.from_dict({**qc, "backend": kernel})
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device, dtype=dtype, **kwargs)
    model.eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def _offline_safe_gptq_kernel(qc: dict, device: str) -> str | None:
    """On Hopper GPUs GPTQModel's auto kernel is Machete, which downloads CUTLASS from GitHub the
    first time (measured: URLError on an offline H100, eval/gpu/h100_gpu_check.json). Marlin builds
    from sources GPTQModel ships, so pick it there unless the user provides CUTLASS."""
    if not device.startswith("cuda") or os.environ.get("GPTQMODEL_CUTLASS_DIR"):
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return None
    return "marlin" if qc.get("bits") in (4, 8) and qc.get("sym", True) else None


def read_meta(path: str | os.PathLike) -> dict | None:
    f = Path(path) / META_FILE
    return read_json(f) if f.is_file() else None


__all__ = ["QuantizedModel", "quantize", "load", "prepare", "check_output", "read_meta", "package_version"]
