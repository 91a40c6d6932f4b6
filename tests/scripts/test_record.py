"""scripts/_record.py: the one writer of benchmark records (eval/*.json), and every benchmark using it."""

from __future__ import annotations

import ast
import argparse
import calendar
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def record():
    spec = importlib.util.spec_from_file_location("_record", SCRIPTS / "_record.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_record_has_command_date_machine_and_the_payload(record, tmp_path, capsys):
    import torch

    from llmq.hardware import cpu_cores, cpu_name

    path = tmp_path / "sub" / "bench_x.json"
    before = time.time()
    # keys of the record's own names in the payload (a record read back to be updated) are replaced
    rec = record.write_record(path, {"rows": [{"a": 1}], "command": "stale", "date": "old", "machine": "old"},
                              command=["scripts/bench_x.py", "--json", "a b.json"])
    assert f"wrote {path}" in capsys.readouterr().out
    on_disk = json.loads(path.read_text())
    assert on_disk == rec and list(rec) == ["command", "date", "rows", "machine"]
    assert rec["rows"] == [{"a": 1}]
    assert rec["command"] == f"{os.path.basename(sys.executable)} scripts/bench_x.py --json 'a b.json'"
    when = calendar.timegm(time.strptime(rec["date"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 1 <= when <= time.time() + 1
    m = rec["machine"]
    assert m["cpu"] == cpu_name() and m["cores"] == cpu_cores() and m["cpus"] == os.cpu_count()
    assert m["ram_gb"] > 0 and m["arch"] == platform.machine() and m["python"] == platform.python_version()
    assert m["torch"] == torch.__version__ and m["threads"] == torch.get_num_threads()
    assert m["transformers"] and len(m["loadavg"]) == 3
    assert (m["gpu"] is None) == (m["gpu_count"] == 0) == (not torch.cuda.is_available())
    assert m["summary"] == f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}" + (
        f", {m['gpu']}" if m["gpu"] else "")
    assert sorted(os.listdir(path.parent)) == ["bench_x.json"]  # no temp file left beside it


def test_command_defaults_to_this_process_argv_and_strings_pass_through(record, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["scripts/bench_y.py", "--limit", "3"])
    rec = record.write_record(tmp_path / "y.json", {}, quiet=True, machine={"cpu": "given"})
    assert rec["command"].endswith(" scripts/bench_y.py --limit 3") and rec["machine"] == {"cpu": "given"}
    assert record.command_line("LLMQ_DATA_DIR=d python x.py") == "LLMQ_DATA_DIR=d python x.py"


def test_machine_threads_and_extra_fields(record):
    m = record.machine(threads=7, device="cpu", loadavg_start=[0.1, 0.2, 0.3])
    assert m["threads"] == 7 and ", 7 threads, " in m["summary"]
    assert m["device"] == "cpu" and m["loadavg_start"] == [0.1, 0.2, 0.3]


def test_write_is_atomic(record, tmp_path, monkeypatch):
    """A write that fails before the rename leaves the previous record whole and no temp file."""
    path = tmp_path / "r.json"
    record.write_record(path, {"v": 1}, quiet=True)
    old = path.read_text()

    def boom(src, dst):
        assert Path(src).parent == path.parent and Path(src).name.endswith(".tmp") and Path(src).is_file()
        assert json.loads(Path(src).read_text())["v"] == 2  # the whole new record, before it replaces the old
        raise OSError("disk full")

    monkeypatch.setattr(record.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        record.write_record(path, {"v": 2}, quiet=True)
    assert path.read_text() == old and os.listdir(tmp_path) == ["r.json"]


def test_written_file_gets_ordinary_permissions(record, tmp_path):
    path = record.write_json(tmp_path / "p.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o640)
    record.write_json(path, {"a": 2})
    assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode


def test_json_arg_defaults_to_eval_script_name_and_takes_aliases(record):
    ap = argparse.ArgumentParser()
    record.add_json_arg(ap, aliases=("--out",))
    assert ap.parse_args([]).json == str(ROOT / "eval" / "test_record.json")  # the calling file's name
    assert ap.parse_args(["--out", "x.json"]).json == "x.json" == ap.parse_args(["--json", "x.json"]).json
    ap2 = argparse.ArgumentParser()
    record.add_json_arg(ap2, ROOT / "eval" / "gpu" / "bench.json")
    assert ap2.parse_args([]).json == str(ROOT / "eval" / "gpu" / "bench.json")


# -- every benchmark script writes its JSON through the helper -------------------------------------
BENCH = sorted(SCRIPTS.glob("bench_*.py")) + sorted(SCRIPTS.glob("gpu_check*.py")) + [SCRIPTS / "update_measured.py"]


def _own_json_writes(tree: ast.AST) -> list[int]:
    """Lines that write JSON without the helper: ``json.dump(...)`` or ``.write_text(json.dumps(...))``."""
    lines = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call) or not isinstance(n.func, ast.Attribute):
            continue
        if n.func.attr == "dump" and isinstance(n.func.value, ast.Name) and n.func.value.id == "json":
            lines.append(n.lineno)
        if n.func.attr == "write_text" and n.args and isinstance(n.args[0], (ast.Call, ast.BinOp)):
            inner = n.args[0].left if isinstance(n.args[0], ast.BinOp) else n.args[0]
            if isinstance(inner, ast.Call) and getattr(inner.func, "attr", None) == "dumps":
                lines.append(n.lineno)
    return lines


def _from_record(tree: ast.AST) -> set[str]:
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "_record" for a in n.names}


def _json_flags(tree: ast.AST) -> list[int]:
    """``add_argument("--json", ...)`` / ``("--out", ...)`` written by hand instead of ``add_json_arg``."""
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"
            and any(isinstance(a, ast.Constant) and a.value in ("--json", "--out") for a in n.args)]


@pytest.mark.parametrize("script", BENCH, ids=lambda p: p.name)
def test_benchmark_writes_json_through_the_helper(script):
    tree = ast.parse(script.read_text())
    names = _from_record(tree)
    assert not _own_json_writes(tree), f"{script.name} writes JSON itself: use _record.write_record"
    assert not _json_flags(tree), f"{script.name} declares --json/--out itself: use _record.add_json_arg"
    if script.name != "update_measured.py":  # writes package data, not a benchmark record
        assert {"add_json_arg", "write_record"} <= names, f"{script.name} must import _record's writer"
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert {"add_json_arg", "write_record"} <= calls
    else:
        assert "write_json" in names


def test_every_script_that_writes_json_is_covered():
    """No script under scripts/ writes JSON on its own (notebooks are not records: build_notebooks)."""
    for script in sorted(SCRIPTS.glob("*.py")):
        if script.name in ("_record.py", "build_notebooks.py"):
            continue
        tree = ast.parse(script.read_text())
        assert not _own_json_writes(tree), script.name
        if "write_record" in _from_record(tree) or "write_json" in _from_record(tree):
            assert script in BENCH, script.name


def test_scripts_find_the_helper_from_any_folder(tmp_path):
    """``python scripts/x.py`` from anywhere: each script puts its own folder on sys.path for _record."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for script in (SCRIPTS / "bench_nan_check.py", SCRIPTS / "bench_gguf.py", SCRIPTS / "gpu_check_eval.py"):
        p = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0 and "--json PATH" in p.stdout, (script.name, p.stderr[-2000:])
