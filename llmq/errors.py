"""Errors users see. Each carries a one-line message; the CLI prints it without a traceback."""

from __future__ import annotations

import difflib
import errno
import os
import re
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


class DataError(LlmqError, ValueError):
    """Text data (calibration, perplexity or task files) that is missing, not text, empty or too short."""


class CalibrationError(DataError):
    """Calibration data that is missing, empty or too short."""


class OutputExistsError(LlmqError, FileExistsError):
    """The output folder exists and is not empty; nothing was written."""


class RemoteCodeError(LlmqError, ValueError):
    """A model folder ships its own Python and the user did not pass ``--trust-remote-code``."""


class CorruptModelError(LlmqError, ValueError):
    """Weights that are truncated, not safetensors, non-finite, or missing for the model class."""


class OutputLockedError(OutputExistsError):
    """Another llmq process is writing the same output folder; nothing was written or deleted."""


class ResourceError(LlmqError, OSError):
    """The machine refused a file operation (disk full, read-only, name too long, permission): one
    line naming the path and what to do, instead of a traceback from wherever the write happened."""


#: errno -> (what happened, what to do). Other OSErrors are bugs or races and keep their traceback.
_RESOURCE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space there or write elsewhere (-o for the output; "
                   "LLMQ_CACHE and TMPDIR move llmq's cache and temporary files)"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write elsewhere (-o, LLMQ_CACHE, TMPDIR)"),
    errno.EFBIG: ("file too large for the file system", "write to another file system (-o, LLMQ_CACHE, TMPDIR)"),
    errno.EROFS: ("read-only file system", "choose a writable folder (-o, LLMQ_CACHE, TMPDIR)"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter name: file systems allow 255 bytes per name and "
                         "llmq adds about 30 characters for its temporary folder"),
    errno.EACCES: ("permission denied", "fix its permissions or choose a folder you can write"),
    errno.EPERM: ("operation not permitted", "fix its permissions or choose a folder you can write"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n)"),
    errno.ENFILE: ("too many open files in the system", "close other programs or raise the system limit"),
}
#: Rust's io::Error as printed by safetensors/tokenizers ("... Os { code: 28, kind: StorageFull ... }")
_RUST_OS = re.compile(r"Os \{ code: (\d+)")


def resource_errno(e: BaseException) -> tuple[int, BaseException] | None:
    """The resource errno in ``e`` or its causes (a library may wrap the OSError, or print a Rust
    one into its own exception's message), with the exception that carries it."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
            return e.errno, e
        m = _RUST_OS.search(str(e)) if not isinstance(e, OSError) else None
        if m and int(m.group(1)) in _RESOURCE_ERRNOS:
            return int(m.group(1)), e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


def note_path(e: BaseException, path: str | os.PathLike) -> None:
    """Remember which output ``e`` interrupted (an OSError from ``write`` names no file), for
    ``resource_error``; the innermost writer's path wins."""
    if getattr(e, "llmq_path", None) is None:
        try:
            e.llmq_path = path  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # exceptions without a __dict__
            pass


def resource_error(e: BaseException, path: str | os.PathLike | None = None) -> ResourceError | None:
    """``e`` as one ``ResourceError`` line when it is (or wraps) a disk-full, read-only, name-too-long
    or permission error; None otherwise. The path named is ``path`` when given (the output a check
    was probing), else the failing file's when the OS named it, else the output llmq was writing."""
    found = resource_errno(e)
    if found is None:
        return None
    code, err = found
    what, todo = _RESOURCE_ERRNOS[code]
    name = path or getattr(err, "filename", None) or getattr(e, "llmq_path", None)
    where = f": {os.fspath(name)}" if name is not None else ""
    out = ResourceError(f"{what[0].upper()}{what[1:]}{where}; {todo}.")
    out.errno = code
    return out
