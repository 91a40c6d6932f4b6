"""What every backend declares and checks before the expensive part.

As in transformers' ``HfQuantizer.validate_environment``: packages, device support and model
shape constraints are checked before any weight is loaded or any calibration runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from llmq.errors import ConfigError, MissingDependencyError

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, _DTYPES[name])


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class Backend:
    name: ClassVar[str] = "base"
    #: ``(import name, pip distribution)`` pairs the backend needs
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: the ``llmq[extra]`` that installs them
    extra: ClassVar[str | None] = None
    needs_calibration: ClassVar[bool] = False
    serializable: ClassVar[bool] = True
    cpu: ClassVar[bool] = True
    gpu: ClassVar[bool] = True

    def __init__(self, scheme: Any, config: Any):
        self.scheme = scheme
        self.config = config

    # -- checks, all before any weights load -------------------------------------------------
    @classmethod
    def missing_packages(cls) -> list[str]:
        return [dist for mod, dist in cls.requires if importlib.util.find_spec(mod) is None]

    @classmethod
    def validate_environment(cls, scheme_name: str, device: str) -> None:
        missing = cls.missing_packages()
        if missing:
            raise MissingDependencyError(f"Scheme {scheme_name!r}", missing, cls.extra or "all")
        if device.startswith("cuda") and not cls.gpu:
            raise ConfigError(f"Scheme {scheme_name!r} does not run on CUDA; use --device cpu.")
        if device == "cpu" and not cls.cpu:
            raise ConfigError(f"Scheme {scheme_name!r} needs a CUDA GPU.")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu.")

    def validate_model(self, source: Any) -> None:
        """Shape checks from the config alone; overridden where kernels have constraints."""

    def versions(self) -> dict[str, str | None]:
        return {dist: package_version(dist) for _, dist in self.requires}

    # -- work ---------------------------------------------------------------------------------
    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        raise NotImplementedError

    def save(self, model: Any, out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)

    def quantization_config(self, model: Any) -> dict | None:
        qc = getattr(model.config, "quantization_config", None)
        if qc is None:
            return None
        return qc if isinstance(qc, dict) else qc.to_dict()
