"""Atomic folder writes: a crash never leaves a half-written model where the user asked for one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from llmq.errors import OutputExistsError, note_path


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder unless ``overwrite``; called before any work starts."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is a file; choose another output folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty; pass --overwrite (overwrite=True) to replace it.")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, inputs: tuple = ()) -> Iterator[Path]:
    """Yield a sibling ``*.incomplete`` folder that replaces ``path`` only when complete; locked,
    debris-cleaning and source-protecting (see ``llmq.outdir.atomic_output``)."""
    from llmq.outdir import atomic_output

    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (a reader never
    sees half a file), on error deleted."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        note_path(e, path)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text through a temp file in the same folder, then rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temp file in the same folder, then rename."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
