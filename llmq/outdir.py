"""Output folders that are complete or absent, never shared, never the source, never left as debris.

``atomic_output`` is the one way to write a result folder:

1. refuse an output that is ``.``/``..``, is or contains the working folder, is, contains or is inside
   an input, cannot be written, or exists and is not empty without ``overwrite``; ``overwrite``
   replaces only a folder llmq wrote (``is_llmq_folder``: it holds one of ``OUTPUT_MARKERS``) or an
   empty one (callers run these checks early through ``reserve_output``; ``atomic_output`` again);
2. take an exclusive lock file ``.NAME.lock`` beside the output (``O_CREAT|O_EXCL``; a lock whose
   owner is dead is stale and taken over), so a second writer fails at once and deletes nothing;
3. remove this output's debris (``.NAME.<token>.incomplete``/``.old``) whose owner is dead, and say so;
4. write into ``.NAME.<token>.incomplete``, then swap it with the old folder in one
   ``renameat2(RENAME_EXCHANGE)`` (Linux) so there is no moment without a complete output; elsewhere
   two renames (a kill between them leaves ``.NAME.<token>.old``, which the next run restores).

A symlinked output is written where the link points. Owner tokens hold no dot: ``o``'s entries never
match ``o.v2``'s. Folders made only to hold the lock are removed again when left empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from llmq.owners import TOKEN, owner_alive, owner_token, remove_entry, start_ticks, token_alive
from llmq.errors import ConfigError, OutputExistsError, OutputLockedError, note_path, resource_error

#: outputs this process completed (for a truthful message on Ctrl-C)
COMMITTED: list[Path] = []
#: outputs this process was writing when interrupted (their temp folders are removed)
IN_PROGRESS: list[Path] = []
#: a folder holding one of these was written by llmq, so ``--overwrite`` may replace it: an output's
#: ``llmq.meta.META_FILE``, a winnerless ``--scheme auto`` run's ``REPORT``, a GGUF cache entry's
#: ``SOURCES_FILE``, a QAT checkpoint's ``CKPT_META`` (and the pickle of llmq before 0.x).
OUTPUT_MARKERS = ("llmq.json", "auto_report.json", ".llmq-sources.json", "qat_state.json", "qat_state.pt")


# -- where the output may go ------------------------------------------------------------------------
def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(p).expanduser()))


def default_output(model: str | os.PathLike | None, scheme: str) -> Path:
    """``out/<model name>-<scheme>``: where ``llmq run`` writes when no ``-o`` is given (None: the demo)."""
    name = "SmolLM2-135M-Instruct" if not model else Path(str(model).rstrip("/")).name.removesuffix(".gguf")
    return Path("out") / f"{name}-{scheme}"


def resolve_output(output: str | os.PathLike) -> Path:
    """The folder an output path names, symlinks resolved (a link is written through, where it
    points). ``.``, ``..``, ``sub/..``, ``/`` and a folder that is or holds the working folder are
    refused: replacing them would pull the current folder (or everything) out from under the user."""
    raw = Path(output).expanduser()
    if raw.is_symlink() and not raw.exists():
        return raw.absolute()  # a link to nowhere, not resolved: ``check_writable`` refuses it
    if str(output).strip() == "" or raw.name in ("", "..") or str(raw) in (".", os.sep):
        raise ConfigError(f"-o {str(output)!r} does not name a folder of its own; give the output folder's "
                          "name (e.g. -o out/NAME).")
    out = _real(raw)
    cwd = _real(os.getcwd())
    if out == cwd or out in cwd.parents:
        raise ConfigError(f"-o {output} is {'the current folder' if out == cwd else 'a parent of the current folder'}"
                          f" ({out}); llmq replaces its output folder as a whole, so name a new one (e.g. -o out/NAME).")
    return out


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
        # the longest name llmq creates for this output: its temp folder ``.NAME.<owner>.incomplete``
        longest = f".{p.name}.{owner_token()}.incomplete"
        if len(os.fsencode(longest)) > os.pathconf(anc, "PC_NAME_MAX"):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(p))
        d = probe_dir / f".llmq-write-test.{owner_token()}"
        d.mkdir()
        os.rmdir(d)
    except OSError as e:
        raise resource_error(e, output) or ConfigError(
            f"Cannot write {output}: {probe_dir} is not writable ({e.strerror}).") from None


def is_llmq_folder(folder: str | os.PathLike) -> bool:
    """A folder llmq wrote: it holds one of ``OUTPUT_MARKERS`` (regular files, not links)."""
    folder = Path(folder)
    return any((folder / m).is_file() and not (folder / m).is_symlink() for m in OUTPUT_MARKERS)


def check_existing(output: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing file, a non-empty folder without ``overwrite``, and with ``overwrite`` a
    non-empty folder llmq did not write (a home folder, a project): nothing is touched."""
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} exists and is a file; choose another output folder.")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{output} exists and is not empty; pass --overwrite (overwrite=True) to "
                                    "replace it.")
        if not is_llmq_folder(output):
            raise OutputExistsError(
                f"{output} is not an llmq output (it has no {OUTPUT_MARKERS[0]}); --overwrite replaces only folders "
                "llmq wrote, or empty ones. Nothing was touched: choose another folder.")
    return output


# -- lock ---------------------------------------------------------------------------------------------
def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _owner(lock: Path) -> tuple[int, str, int] | None:
    """(pid, host name, start ticks) of a lock file, None when it is unreadable."""
    try:
        data = json.loads(lock.read_text())
        return int(data["pid"]), str(data.get("host", "")), int(data.get("start", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _lock_alive(owner: tuple[int, str, int]) -> bool:
    pid, host, start = owner
    return host not in ("", socket.gethostname()) or owner_alive(pid, start)


#: locks taken by ``reserve_output``: lock file -> the thread holding it. ``output_lock`` in that
#: thread (the save's ``atomic_output``) enters without locking again; any other caller, another
#: thread of this process included, is refused as usual.
_RESERVED: dict[Path, int] = {}


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": start_ticks(os.getpid())}


def _try_lock(output: Path, lock: Path) -> bool:
    """Create the lock file; False when a live process holds it. Takes over a dead owner's lock."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if owner is None:
                # a lock being written this instant, or garbage: garbage older than 60 s is stale
                try:
                    if time.time() - lock.stat().st_mtime < 60:
                        return False
                except FileNotFoundError:
                    continue
            elif _lock_alive(owner):
                return False
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        return True
    raise OutputLockedError(f"Could not lock {output} ({lock}); try again.")  # pragma: no cover - three races


def _locked_message(output: Path, lock: Path) -> str:
    owner = _owner(lock)
    if owner is None:
        return f"{output} is being written by another llmq process (lock {lock}); nothing was written."
    return (f"{output} is being written by another llmq process (pid {owner[0]} on {owner[1]}); wait for it, "
            f"or delete {lock} if that process is gone. Nothing was written.")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, *, wait: float = 0.0,
                note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Exclusive lock for one output folder. A lock held by a live process (or on another host)
    raises ``OutputLockedError`` at once, or with ``wait`` (seconds) once that long has passed
    (``note`` is told once that it waits); a dead owner's lock on this host is taken over. Inside
    ``reserve_output`` (same thread) it is already held and is entered without locking again."""
    output = Path(output).expanduser().absolute()
    created = [d for d in (output.parent, *output.parent.parents) if not d.exists()]  # deepest first
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(output)
    me = _me()
    if _RESERVED.get(lock) == threading.get_ident() and _owner(lock) == (me["pid"], me["host"], me["start"]):
        yield lock
        return
    deadline = time.monotonic() + wait
    told = False
    while not _try_lock(output, lock):
        if time.monotonic() >= deadline:
            msg = _locked_message(output, lock)
            raise OutputLockedError(msg if not wait else f"{msg} (waited {wait:.0f} s)")
        if note is not None and not told:
            note(f"{_locked_message(output, lock).split(';')[0]}; waiting up to {wait:.0f} s for it")
            told = True
        time.sleep(0.25)
    try:
        yield lock
    finally:
        if _owner(lock) == (me["pid"], me["host"], me["start"]):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        for d in created:  # a failed run leaves no empty `out/`; rmdir removes only empty folders
            with contextlib.suppress(OSError):
                d.rmdir()


# -- debris -------------------------------------------------------------------------------------------
def _debris_patterns(name: str) -> list[re.Pattern]:
    """Exact names of one output's temp and old folders: this version's (owner token) and the
    names llmq wrote before it (pid only; still parsed exactly, so ``o.v2``'s never match ``o``)."""
    n = re.escape(name)
    return [re.compile(rf"^\.{n}\.{TOKEN}\.(?P<kind>incomplete|old)$"),
            re.compile(rf"^\.{n}\.(?P<pid>\d+)-(?:auto-)?[a-z0-9_]{{8}}\.(?P<kind>incomplete)$"),
            re.compile(rf"^\.{n}\.(?P<kind>old)-(?P<pid>\d+)$")]


def _dead(m: re.Match) -> bool:
    if "start" in m.re.groupindex:
        return not token_alive(m)
    return not owner_alive(int(m["pid"]))


def debris(output: str | os.PathLike) -> list[Path]:
    """Leftovers of killed writes of exactly ``output`` whose owner process is dead: temp folders
    and moved-aside old folders. A live process's entries (this one's included) are never listed."""
    output = Path(output).expanduser().absolute()
    if not output.parent.is_dir():
        return []
    pats = _debris_patterns(output.name)
    found = []
    for p in output.parent.iterdir():
        m = next((m for pat in pats if (m := pat.match(p.name))), None)
        if m is not None and _dead(m):
            found.append(p)
    return sorted(found)


def _is_old(output: Path, p: Path) -> bool:
    return p.name.endswith(".old") or p.name.startswith(f".{output.name}.old-")


def clean_debris(output: str | os.PathLike, *, log: bool = True) -> list[str]:
    """Call with the lock held. Removes the dead-owner entries ``debris`` lists; when the output
    itself is missing and an old folder survives (killed between the two renames of the non-Linux
    commit), that folder is the last complete result and is moved back instead. Returns one line
    per action (also printed to stderr with ``log``); what could not be removed is said so."""
    output = Path(output).expanduser().absolute()
    actions = []
    for p in debris(output):
        if _is_old(output, p) and not output.exists() and p.is_dir() and not p.is_symlink():
            os.replace(p, output)
            actions.append(f"restored {output} from {p.name} (left by a killed run)")
            continue
        if remove_entry(p):
            actions.append(f"removed {p} (left by a killed run)")
        else:
            actions.append(f"could not remove {p} (left by a killed run); delete it yourself")
    if log:
        for a in actions:
            print(f"llmq: note: {a}", file=sys.stderr)
    return actions


def sibling_temp(output: str | os.PathLike) -> Path:
    """A new empty folder ``.NAME.<token>.incomplete`` beside ``output`` (same filesystem, so it can be
    renamed into place; found by ``debris`` once its owner is dead)."""
    output = Path(output).expanduser().absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{owner_token()}.incomplete"
    tmp.mkdir()  # 0o777 less the umask: the committed output gets the user's usual permissions
    return tmp


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
        remove_entry(tmp)  # tmp now holds the old folder
        return
    old = output.with_name(f".{output.name}.{owner_token()}.old")
    os.replace(output, old)
    os.replace(tmp, output)
    remove_entry(old)


def _checked(output: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None]) -> Path:
    """The checks every writer runs before it takes the lock: names a folder of its own, is/contains/is
    inside an input, exists (and is llmq's, to be overwritten), writable. Returns the real path."""
    output = resolve_output(output)
    check_location(output, list(inputs))
    check_existing(output, overwrite)
    check_writable(output)
    return output


@contextlib.contextmanager
def atomic_output(output: str | os.PathLike, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike | None] = (), *, track: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside ``output``; when the block succeeds it becomes ``output``
    (see the module docstring); on any exception (Ctrl-C included) it is deleted and an existing
    output is untouched. The existing-output check runs again at commit time, under the lock.
    ``track=False``: not a result the interrupt message should name (a checkpoint)."""
    output = _checked(output, overwrite, inputs)
    with output_lock(output) as lock:
        if lock not in _RESERVED:  # under ``reserve_output`` the debris was cleaned when it locked
            clean_debris(output)
        tmp = sibling_temp(output)
        IN_PROGRESS.append(output)
        try:
            yield tmp
            check_existing(output, overwrite)
            commit(tmp, output)
        except BaseException as e:
            remove_entry(tmp)
            note_path(e, output)  # a full disk's OSError names no file: say which output it was
            raise
        finally:
            IN_PROGRESS.remove(output)
    if track:
        COMMITTED.append(output)


@contextlib.contextmanager
def reserve_output(output: str | os.PathLike, overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike | None] = (), *, wait: float = 0.0,
                   note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Check the output (see ``_checked``) and hold its lock for the whole block: the pipelines wrap
    training, quantizing and saving in it, so a second writer of the same output fails before it
    loads a weight, not after quantizing. ``atomic_output`` inside the block re-enters the lock.
    ``wait``/``note``: see ``output_lock`` (the GGUF cache waits for another writer)."""
    output = _checked(output, overwrite, inputs)
    with output_lock(output, wait=wait, note=note) as lock:
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


def umask() -> int:
    """The process umask (read without changing it), for files and folders written through a temporary
    name: ``mkstemp``/``mkdtemp`` create them private, the final name gets ordinary permissions."""
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
