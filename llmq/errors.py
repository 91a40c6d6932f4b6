"""Errors users see. Each carries a one-line message; the CLI prints it without a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class LlmqError(Exception):
    """Base class: a problem with the user's input or environment, explained in one line."""


class UnknownNameError(LlmqError, ValueError):
    """An unknown scheme, task, dataset or option name."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        self.kind, self.name, self.valid = kind, name, valid
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"Unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.")


class MissingDependencyError(LlmqError, ImportError):
    """A backend's optional package is not installed."""

    def __init__(self, what: str, packages: Iterable[str], extra: str):
        self.packages, self.extra = list(packages), extra
        super().__init__(
            f"{what} needs {', '.join(self.packages)}, which is not installed: "
            f"pip install 'llmq[{extra}]'"
        )


class ConfigError(LlmqError, ValueError):
    """An invalid configuration value (bits, group size, overrides, ...)."""


class UnsupportedModelError(ConfigError):
    """A scheme that cannot quantize this model's architecture or layers (refused before any weight
    loads, never a silent no-op); the message names the model type and what works instead."""


class ModelNotFoundError(LlmqError, FileNotFoundError):
    """A model id or path that cannot be resolved, or a Hub that cannot be reached."""


class CalibrationError(LlmqError, ValueError):
    """Calibration data that is missing, empty or too short."""


class OutputExistsError(LlmqError, FileExistsError):
    """The output folder exists and is not empty; nothing was written."""


class RemoteCodeError(LlmqError, ValueError):
    """A model folder ships its own Python and the user did not pass ``--trust-remote-code``."""


class CorruptModelError(LlmqError, ValueError):
    """Weights that are truncated, not safetensors, non-finite, or missing for the model class."""


class OutputLockedError(OutputExistsError):
    """Another llmq process is writing the same output folder; nothing was written or deleted."""
