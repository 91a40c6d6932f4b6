"""Output folders that are complete or absent, never shared, never the source, never left as debris.

``atomic_output`` is the one way to write a result folder:

1. refuse an output that is, contains or is inside an input, or that cannot be written (before any
   weight loads: callers run ``check_location``/``check_writable`` early, ``atomic_output`` again);
2. take an exclusive lock file ``.NAME.lock`` beside the output (``O_CREAT|O_EXCL``; a lock whose
   pid is dead is stale and taken over), so a second writer fails at once and deletes nothing;
3. remove debris of earlier killed runs (``.NAME.*.incomplete``, ``.NAME.old-*``) and say so;
4. write into ``.NAME.<pid>-<random>.incomplete``, then swap it with the old folder in one
   ``renameat2(RENAME_EXCHANGE)`` (Linux) so there is no moment without a complete output; elsewhere
   two renames (a kill between them leaves ``.NAME.old-<pid>``, which the next run restores).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from llmq.errors import ConfigError, OutputExistsError, OutputLockedError, note_path, resource_error

#: outputs this process completed (for a truthful message on Ctrl-C)
COMMITTED: list[Path] = []
#: outputs this process was writing when interrupted (their temp folders are removed)
IN_PROGRESS: list[Path] = []


# -- where the output may go ------------------------------------------------------------------------
def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(p).expanduser()))


def default_output(model: str | os.PathLike | None, scheme: str) -> Path:
    """``out/<model name>-<scheme>``: where ``llmq run`` writes when no ``-o`` is given (None: the demo)."""
    name = "SmolLM2-135M-Instruct" if not model else Path(str(model).rstrip("/")).name.removesuffix(".gguf")
    return Path("out") / f"{name}-{scheme}"


def check_location(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that is, contains, or is inside a local input. A model folder is the input
    as a whole; a single file (a ``.gguf``) is only itself, so its neighbours in the same folder, and
    subfolders there, are fair outputs as long as they do not contain it."""
    out = _real(output)
    for src in inputs:
        if src is None:
            continue
        s = Path(src).expanduser()
        if not s.exists():
            continue
        s = _real(s)
        if out == s:
            raise ConfigError(f"The output {output} is the input model {src}; choose another folder "
                              "(llmq never writes over its source).")
        if s.is_dir() and s in out.parents:
            raise ConfigError(f"The output {output} is inside the input model folder {s}; choose a "
                              "folder outside it.")
        if out in s.parents:
            raise ConfigError(f"The output {output} contains the input model {src}; replacing it would "
                              "delete the source. Choose another folder.")


def check_writable(output: str | os.PathLike) -> None:
    """The output's nearest existing ancestor is a folder we can create entries in (tested by
    creating one, since ``os.access`` says yes to root on read-only mounts)."""
    p = Path(output).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"{p} exists and is a file; choose another output folder.")
    anc = p if p.exists() else p.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"Cannot write {output}: {anc} is a file, not a folder.")
    if p.is_symlink() and not p.exists():
        raise ConfigError(f"The output {output} is a symlink to {os.readlink(p)}, which does not exist; "
                          "choose another folder or fix the link.")
    probe_dir = p.parent if p.parent.exists() else anc
    try:
        # the longest name llmq creates for this output: its temp folder ``.NAME.<pid>-<random>.incomplete``
        longest = f".{p.name}.{os.getpid()}-xxxxxxxx.incomplete"
        if len(os.fsencode(longest)) > os.pathconf(anc, "PC_NAME_MAX"):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(p))
        d = tempfile.mkdtemp(prefix=".llmq-write-test-", dir=probe_dir)
        os.rmdir(d)
    except OSError as e:
        raise resource_error(e, output) or ConfigError(
            f"Cannot write {output}: {probe_dir} is not writable ({e.strerror}).") from None


# -- lock ---------------------------------------------------------------------------------------------
def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


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


def _owner(lock: Path) -> tuple[int, str] | None:
    try:
        data = json.loads(lock.read_text())
        return int(data["pid"]), str(data.get("host", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: locks taken by ``reserve_output``: lock file -> the thread holding it. ``output_lock`` in that
#: thread (the save's ``atomic_output``) enters without locking again; any other caller, another
#: thread of this process included, is refused as usual.
_RESERVED: dict[Path, int] = {}


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Exclusive lock for one output folder. A lock held by a live process (or on another host)
    raises ``OutputLockedError`` at once; a dead pid's lock on this host is taken over. Inside
    ``reserve_output`` (same thread) it is already held and is entered without locking again."""
    output = Path(output).expanduser().absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(output)
    import threading

    if _RESERVED.get(lock) == threading.get_ident() and _owner(lock) == (os.getpid(), socket.gethostname()):
        yield lock
        return
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if owner is None:
                # a lock being written this instant, or garbage: garbage older than 60 s is stale
                import time

                try:
                    if time.time() - lock.stat().st_mtime < 60:
                        raise OutputLockedError(f"{output} is being written by another llmq process "
                                                f"(lock {lock}); nothing was written.") from None
                except FileNotFoundError:
                    continue
            elif owner[1] not in ("", me["host"]) or pid_alive(owner[0]):
                raise OutputLockedError(
                    f"{output} is being written by another llmq process (pid {owner[0]} on {owner[1]}); "
                    f"wait for it, or delete {lock} if that process is gone. Nothing was written.") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - three races in a row
        raise OutputLockedError(f"Could not lock {output} ({lock}); try again.")
    try:
        yield lock
    finally:
        if _owner(lock) == (me["pid"], me["host"]):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


# -- debris -------------------------------------------------------------------------------------------
def debris(output: str | os.PathLike) -> list[Path]:
    """Leftovers of killed writes of ``output``: temp folders and moved-aside old folders."""
    output = Path(output).expanduser().absolute()
    if not output.parent.is_dir():
        return []
    name = output.name
    return sorted(p for p in output.parent.iterdir()
                  if p.name.startswith(f".{name}.") and (p.name.endswith(".incomplete") or
                                                        p.name.startswith(f".{name}.old-"))
                  and _debris_pid(output, p) != os.getpid())  # this process's own work in progress


def _debris_pid(output: Path, p: Path) -> int | None:
    """The pid in ``.NAME.<pid>-....incomplete`` / ``.NAME.old-<pid>`` (None for older names)."""
    rest = p.name[len(output.name) + 2:]
    rest = rest[4:] if rest.startswith("old-") else rest
    digits = rest.split("-", 1)[0].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None


def clean_debris(output: str | os.PathLike, *, log: bool = True) -> list[str]:
    """Call with the lock held. Removes ``.NAME.*.incomplete`` and ``.NAME.old-*`` folders; when the
    output itself is missing and an ``old-*`` folder survives (killed between the two renames of the
    non-Linux commit), that folder is the last complete result and is moved back instead. Returns
    one line per action (also printed to stderr with ``log``)."""
    output = Path(output).expanduser().absolute()
    actions = []
    for p in debris(output):
        if p.name.startswith(f".{output.name}.old-") and not output.exists():
            os.replace(p, output)
            actions.append(f"restored {output} from {p.name} (left by a killed run)")
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        actions.append(f"removed {p} (left by a killed run)")
    if log:
        for a in actions:
            print(f"llmq: note: {a}", file=sys.stderr)
    return actions


# -- commit -------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    r = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(a))


def commit(tmp: Path, output: Path) -> None:
    """Make the complete ``tmp`` folder appear as ``output``; an existing output is replaced in
    one atomic swap and then deleted."""
    if not output.exists():
        os.rename(tmp, output)
        return
    if _exchange(tmp, output):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)


def _check_existing(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} exists and is a file; choose another output folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output} exists and is not empty; pass --overwrite (overwrite=True) to replace it.")


def _checked(output: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None]) -> Path:
    """The checks every writer runs before it takes the lock: exists, is/contains/is inside an input, writable."""
    output = Path(output).expanduser()
    _check_existing(output, overwrite)
    check_location(output, list(inputs))
    check_writable(output)
    return output


@contextlib.contextmanager
def atomic_output(output: str | os.PathLike, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield an empty temp folder beside ``output``; when the block succeeds it becomes ``output``
    (see the module docstring); on any exception (Ctrl-C included) it is deleted and an existing
    output is untouched. The existing-output check runs again at commit time, under the lock."""
    output = _checked(output, overwrite, inputs)
    with output_lock(output) as lock:
        if lock not in _RESERVED:  # under ``reserve_output`` the debris was cleaned when it locked
            clean_debris(output)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.{os.getpid()}-", suffix=".incomplete",
                                    dir=output.absolute().parent))
        os.chmod(tmp, 0o777 & ~_umask())
        IN_PROGRESS.append(output)
        try:
            yield tmp
            _check_existing(output, overwrite)
            commit(tmp, output)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            note_path(e, output)  # a full disk's OSError names no file: say which output it was
            raise
        finally:
            IN_PROGRESS.remove(output)
    COMMITTED.append(output)


@contextlib.contextmanager
def reserve_output(output: str | os.PathLike, overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Check the output (exists, is/contains/is inside an input, writable) and hold its lock for the
    whole block: the run pipeline wraps quantize and save in it, so a second writer of the same
    output fails before it loads a weight, not after quantizing. ``atomic_output`` inside the block
    re-enters the lock."""
    output = _checked(output, overwrite, inputs)
    import threading

    with output_lock(output) as lock:
        clean_debris(output)
        _RESERVED[lock] = threading.get_ident()
        try:
            yield lock
        finally:
            _RESERVED.pop(lock, None)


def terminate_as_interrupt() -> Any:
    """Make SIGTERM (``kill``, job schedulers, ``timeout``) unwind like Ctrl-C, so the temp folder
    and the lock are removed instead of left for the next run. Main thread only (a no-op elsewhere).
    Returns the previous handler (``signal.signal(signal.SIGTERM, it)`` restores it; None: unchanged)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    return previous


def interrupt_message() -> str:
    """What Ctrl-C actually left behind, for the CLI's last line."""
    done = ", ".join(str(p) for p in COMMITTED)
    if done:
        return f"llmq: interrupted; {done} had been written completely before the interrupt."
    return "llmq: interrupted; nothing was written to the output folder."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- reproducible files ---------------------------------------------------------------------------------
def canonicalize_safetensors_metadata(path: str | os.PathLike) -> bool:
    """Rewrite a safetensors header in place with ``__metadata__`` keys sorted (the Rust writer
    stores them from a hash map, so their order changes between runs). Tensor bytes and the header
    length are unchanged: the new JSON is padded with spaces, as the format allows. Returns whether
    the file changed."""
    path = Path(path)
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            return False
        header["__metadata__"] = dict(sorted(meta.items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(new) > n:
            return False
        new = new + b" " * (n - len(new))
        if new == raw:
            return False
        f.seek(8)
        f.write(new)
    return True


def canonicalize_folder(path: str | os.PathLike) -> int:
    return sum(canonicalize_safetensors_metadata(f) for f in sorted(Path(path).glob("*.safetensors")))
