"""One way for the benchmark scripts to write their JSON records (``eval/*.json``).

Every record is the script's own payload plus three keys this module adds: ``command`` (the exact
command line), ``date`` (UTC, ISO 8601) and ``machine`` (:func:`machine`: CPU model and its speed
flags, cores, RAM, load, python/torch/transformers versions, GPU if any). The file is replaced
atomically (temp file + ``os.replace``), so a run killed mid-write leaves the previous record whole.

Scripts import it as ``from _record import ...`` after putting their own folder on ``sys.path``
(``python scripts/x.py`` already does; the explicit insert also covers imports from elsewhere)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _record import add_json_arg, write_record

    ap = argparse.ArgumentParser()
    add_json_arg(ap)                      # --json PATH, default eval/<this script's name>.json
    args = ap.parse_args()
    ...
    write_record(args.json, {"rows": rows})
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "eval"
#: the keys :func:`write_record` adds to every payload
RECORD_KEYS = ("command", "date", "machine")


def add_json_arg(parser: argparse.ArgumentParser, default: str | os.PathLike | None = None, *,
                 aliases: Sequence[str] = (), help: str | None = None) -> argparse.Action:
    """Add ``--json PATH`` (``args.json``) to ``parser``: where the record goes. ``default``: the
    calling script's ``eval/<name>.json`` in this repository; ``aliases``: older names of the flag
    (e.g. ``--out``), accepted as the same option."""
    if default is None:
        caller = sys._getframe(1).f_globals.get("__file__") or sys.argv[0]
        default = EVAL / f"{Path(caller).stem}.json"
    shown = default
    try:
        shown = Path(default).resolve().relative_to(ROOT)
    except ValueError:
        pass
    return parser.add_argument("--json", *aliases, dest="json", metavar="PATH", default=str(default),
                               help=help or f"where the JSON record is written (default: {shown})")


def machine(*, threads: int | None = None, **extra: Any) -> dict:
    """What ran the benchmark. ``threads``: the thread count the benchmark used when it is not this
    process's torch thread count (e.g. benchmark children run with ``--threads``); ``extra``: more
    fields (they win over the detected ones). ``summary`` is one line for tables and notes."""
    from importlib import metadata

    from llmq.hardware import cpu_cores, cpu_name, ram_gb

    info: dict[str, Any] = {"cpu": cpu_name(), "arch": platform.machine(), "cores": cpu_cores(),
                            "cpus": os.cpu_count(), "ram_gb": round(ram_gb()[0], 1)}
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        info["loadavg"] = None
    info.update(os=platform.platform(), python=platform.python_version())
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is llmq's dependency
        torch = None
    info["threads"] = threads or (torch.get_num_threads() if torch else None)
    info["torch"] = torch.__version__ if torch else None
    try:
        info["transformers"] = metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover
        info["transformers"] = None
    info["cuda"] = torch.version.cuda if torch else None
    gpus = torch.cuda.device_count() if torch and torch.cuda.is_available() else 0
    info["gpu"] = torch.cuda.get_device_name(0) if gpus else None
    info["gpu_count"] = gpus
    info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpus else None
    info["summary"] = (f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}"
                       + (f", {info['gpu']}" if info["gpu"] else ""))
    info.update(extra)
    return info


_machine = machine  # write_record's keyword of the same name shadows it


def command_line(command: str | Sequence[str] | None = None) -> str:
    """``command`` as one shell line: a string as given, an argv list as ``python <argv...>``
    (default: this process's ``sys.argv``, under the interpreter's own name)."""
    if isinstance(command, str):
        return command
    argv = list(sys.argv if command is None else command)
    return shlex.join([os.path.basename(sys.executable) or "python", *argv])


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _mode(path: Path) -> int:
    """``path``'s permission bits, or those a new file gets (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        from llmq.outdir import umask

        return 0o666 & ~umask()


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: a temp file in the same folder, then
    ``os.replace`` (readers see the old file or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, default=str) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode(path))  # mkstemp's file is 0600: give it the mode a plain write would
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_record(path: str | os.PathLike, payload: dict, *, command: str | Sequence[str] | None = None,
                 machine: dict | None = None, quiet: bool = False) -> dict:
    """Write ``payload`` to ``path`` as a benchmark record: ``command`` (:func:`command_line`;
    default: this process's exact command line), ``date`` (now, UTC), the payload's own keys, then
    ``machine`` (default: :func:`machine`). Keys of these names in ``payload`` (e.g. a record read
    back to be updated) are replaced. Atomic (:func:`write_json`); prints where it wrote unless
    ``quiet`` (scripts that rewrite their record after every step). Returns the record."""
    record = {"command": command_line(command), "date": utc_now(),
              **{k: v for k, v in payload.items() if k not in RECORD_KEYS},
              "machine": machine if machine is not None else _machine()}
    write_json(path, record)
    if not quiet:
        print(f"wrote {path}", flush=True)
    return record
