"""llmq/advisor/measured.json (package data) is what scripts/update_measured.py derives from eval/, and
the advisor copes without it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from llmq.advisor import measured

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "eval"


def test_measured_json_matches_eval():
    assert measured.DATA.read_text() == json.dumps(measured.from_eval(EVAL), indent=2) + "\n", (
        "llmq/advisor/measured.json is stale: python scripts/update_measured.py")


def test_constants_are_the_json_tables():
    tables = measured.from_eval(EVAL)
    assert measured.CPU_SPEED == tables["CPU_SPEED"] and measured.SMOL_QUALITY == tables["SMOL_QUALITY"]
    assert measured.GPU_SPEED == tables["GPU_SPEED"]
    assert list(measured.SMOL_QUALITY["rows"])[:2] == ["fp16", "bf16"]  # the README table's order


def test_update_script_check_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(ROOT / "scripts"), *sys.path])  # restored after the test
    import update_measured
    assert update_measured.main(["--check"]) == 0
    # a record that changed in eval/ makes the shipped copy stale
    ev = tmp_path / "eval"
    shutil.copytree(EVAL, ev, ignore=shutil.ignore_patterns("lm_eval_tasks"))
    d = json.loads((ev / "bench_cpu_speed.json").read_text())
    d["results"][0]["decode_x"] += 1
    (ev / "bench_cpu_speed.json").write_text(json.dumps(d))
    assert update_measured.main(["--check", "--eval", str(ev)]) == 1


def test_new_style_machine_block_is_read_as_its_summary(tmp_path):
    """Records written by scripts/_record.py carry a machine dict: the advisor quotes its summary line."""
    ev = tmp_path / "eval"
    shutil.copytree(EVAL, ev, ignore=shutil.ignore_patterns("lm_eval_tasks"))
    d = json.loads((ev / "bench_cpu_speed.json").read_text())
    d["machine"] = {"cpu": "Some CPU (avx512_vnni)", "threads": 4, "summary": "Some CPU (avx512_vnni), 4 threads, torch 9"}
    d["command"] = "python scripts/bench_cpu_speed.py --work /tmp/w"
    (ev / "bench_cpu_speed.json").write_text(json.dumps(d))
    t = measured.cpu_speed(ev)
    assert t["machine"] == "Some CPU (avx512_vnni), 4 threads, torch 9" and t["command"] == d["command"]


def test_gpu_command_names_the_file_as_stored_in_the_repo():
    assert measured.GPU_SPEED["command"] == "python3 scripts/bench_gpu.py --out eval/gpu/bench.json"


def test_missing_file_gives_empty_tables_and_the_advisor_still_answers(tmp_path, monkeypatch):
    import llmq
    from llmq.advisor import report, rules

    t = measured.load(tmp_path / "missing.json")
    assert all(v["rows"] == {} and "could not be read" in v["unavailable"] for v in t.values())
    monkeypatch.setattr(measured, "CPU_SPEED", t["CPU_SPEED"])
    monkeypatch.setattr(measured, "SMOL_QUALITY", t["SMOL_QUALITY"])
    monkeypatch.setattr(measured, "GPU_SPEED", t["GPU_SPEED"])
    monkeypatch.setattr(rules, "MEASURED_CPU_SPEED", t["CPU_SPEED"])
    cpu = llmq.advise(300_000_000, device="cpu", ram_gb=16)
    assert cpu.recommended is not None and not any("measured on SmolLM2" in n for n in cpu.notes)
    gpu = llmq.advise(1_100_000_000, device="cuda", gpu_memory_gb=80)
    assert gpu.recommended is not None and any("measurements unavailable" in n for n in gpu.notes)
    md = report.which_scheme_markdown()
    assert "### Measured on SmolLM2-135M" not in md and "contradict" not in md


def test_measured_json_is_package_data():
    """A non-editable install ships it: pyproject's package-data names it."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "advisor/measured.json" in cfg["tool"]["setuptools"]["package-data"]["llmq"]
