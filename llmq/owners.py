"""Who owns a temporary entry, and whether that owner still runs: the one mechanism by which llmq
decides that a temp folder, a moved-aside old result, a lock or a scratch folder was left by a dead
process and may be removed.

Every such entry carries an **owner token** in its name, ``<pid>-<start>-<host>-<random>``: the pid,
the process's start time in clock ticks (``/proc/<pid>/stat``; 0 where unknown), a short hash of the
host name and 8 random characters. The owner is dead when it ran on this host and that pid is gone, a
zombie, or now belongs to a process that started at another time (a reused pid). An entry of another
host is never judged dead (its processes cannot be seen from here). The token holds no dot, so a name
built as ``<prefix>.<token>.<suffix>`` parses one way only (see ``llmq.outdir`` for outputs).

Scratch folders (GGUF conversion, isolated GGUF views) live in the temp directory as
``llmq-scratch.<purpose>.<token>``; every new one first removes those whose owner is dead, so a
``kill -9`` leaves nothing for longer than the next llmq run that needs scratch space.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

#: the owner token: pid, start ticks, host hash, random (no dots: names split on dots parse one way)
TOKEN = r"(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{6})-(?P<rand>[a-z0-9]{8})"
_TOKEN_RE = re.compile(TOKEN)
SCRATCH_PREFIX = "llmq-scratch"
_SCRATCH_RE = re.compile(rf"^{SCRATCH_PREFIX}\.(?P<purpose>[a-z0-9-]+)\.{TOKEN}$")


def host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux ``/proc``), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def owner_token() -> str:
    """A fresh token naming this process as the owner (random part: two entries never share a name)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    rand = "".join(secrets.choice(alphabet) for _ in range(8))
    return f"{os.getpid()}-{start_ticks(os.getpid())}-{host_id()}-{rand}"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """A killed child that its parent has not reaped yet still answers ``kill(pid, 0)``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(pid: int, start: int = 0, host: str | None = None) -> bool:
    """Whether the process that wrote an owner record may still run. ``host`` None: this host (a
    record without a host); another host's owner is always presumed alive."""
    if host is not None and host != host_id():
        return True
    if not pid_alive(pid):
        return False
    if start:
        now = start_ticks(pid)
        return now == 0 or now == start  # another start time: the pid was reused by a new process
    return True


def token_alive(match: re.Match) -> bool:
    """``owner_alive`` for a match of ``TOKEN``."""
    return owner_alive(int(match["pid"]), int(match["start"]), match["host"])


def remove_entry(p: Path) -> bool:
    """Delete a file, folder or symlink (a symlink itself, never what it points to). True when it is gone."""
    try:
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            shutil.rmtree(p)
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.lexists(p)
    return not os.path.lexists(p)


# -- scratch folders ---------------------------------------------------------------------------------
def scratch_root() -> Path:
    return Path(tempfile.gettempdir())


def clean_scratch(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove scratch folders whose owner is dead; returns what was removed."""
    root = Path(root) if root is not None else scratch_root()
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _SCRATCH_RE.match(p.name)
        if m and not token_alive(m) and remove_entry(p):
            removed.append(p)
    return removed


def make_scratch(purpose: str, root: str | os.PathLike | None = None) -> Path:
    """A new empty scratch folder owned by this process (``purpose``: lowercase letters, digits,
    dashes), after removing dead owners' ones. The caller removes it (``scratch_dir`` does)."""
    if not re.fullmatch(r"[a-z0-9-]+", purpose):
        raise ValueError(f"scratch purpose {purpose!r}: use lowercase letters, digits and dashes")
    root = Path(root) if root is not None else scratch_root()
    clean_scratch(root)
    for _ in range(5):
        p = root / f"{SCRATCH_PREFIX}.{purpose}.{owner_token()}"
        try:
            p.mkdir(mode=0o700)
            return p
        except FileExistsError:  # pragma: no cover - 36**8 random names
            continue
    raise FileExistsError(f"could not create a scratch folder in {root}")  # pragma: no cover


@contextlib.contextmanager
def scratch_dir(purpose: str, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """``make_scratch``, removed when the block ends (a ``kill -9`` leaves it to ``clean_scratch``)."""
    p = make_scratch(purpose, root)
    try:
        yield p
    finally:
        remove_entry(p)
