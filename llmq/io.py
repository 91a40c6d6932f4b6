"""Atomic folder writes: a crash never leaves a half-written model where the user asked for one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from llmq.outdir import umask
from llmq.errors import OutputExistsError, note_path


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing file, a non-empty folder unless ``overwrite``, and a non-empty folder llmq did
    not write even with it (``llmq.outdir.check_existing``); called before any work starts."""
    from llmq.outdir import check_existing, resolve_output

    resolve_output(path)
    return check_existing(path, overwrite)


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
        os.chmod(tmp, 0o666 & ~umask())
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
