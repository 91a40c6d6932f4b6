"""scripts/bench_scale.py's own logic: per-layer timing of GPTQ/AWQ runs, timeouts, and reading the
JSON a command printed among its notes."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPTS / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layer_times_project_from_the_median_layer(bench):
    lines = [(12.0, "llmq: awq-int4: layer 1/32\n"), (50.0, "some progress\n"),
             (112.0, "llmq: awq-int4: layer 2/32\n"), (262.0, "llmq: awq-int4: layer 3/32\n"),
             (362.0, "llmq: awq-int4: layer 4/32\n")]
    t = bench.layer_times(lines)
    assert t["layers_started"] == 4 and t["of"] == 32 and t["per_layer_s"] == [100.0, 100.0, 150.0]
    assert t["projected_total_s"] == 12 + 32 * 100
    assert bench.layer_times([(5.0, "llmq: gptq-int4: layer 1/22\n")]) == {"layers_started": 1, "of": 22}
    assert bench.layer_times([(5.0, "no layers here\n")]) is None


def test_a_run_past_its_timeout_is_stopped_and_keeps_its_layer_times(bench, monkeypatch, tmp_path):
    fake = tmp_path / "memcap"  # runs the command without a cap
    fake.write_text('#!/bin/sh\nshift\nexec "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(bench, "MEMCAP", fake)
    script = "for i in 1 2 3; do echo llmq: gptq-int4: layer $i/9 >&2; sleep 0.3; done; sleep 60"
    r = bench.run_one(["bash", "-c", script], cap=0, timeout=3)
    assert r["exit"] == "timeout" and r["wall_s"] < 30
    assert r["layers"]["layers_started"] == 3 and r["layers"]["of"] == 9


def test_the_printed_json_is_found_among_notes(bench):
    out = 'llmq: reading [x] {y}\n{\n "ppl": [1, 2]\n}\nmemcap: cap 20 GiB, peak 1.0 GiB, wall 3 s, exit 0\n'
    assert bench._last_json(out) == {"ppl": [1, 2]}
    assert bench._last_json("no json\n") is None


def test_timeouts_per_scheme_and_for_every_run(bench):
    """One run reproduces the table: AWQ stopped after its first layers, the rest to the end."""
    assert bench.timeouts("awq-int4=1800") == {"awq-int4": 1800.0}
    assert bench.timeouts("600, awq-int4=1800") == {"*": 600.0, "awq-int4": 1800.0}
    for bad in ("awq=1800", "awq-int4=soon"):
        with pytest.raises(Exception, match="unknown scheme|not a number"):
            bench.timeouts(bad)
    assert set(bench.TABLE_SCHEMES) <= set(bench.SCHEMES)


def test_the_phase_that_held_the_peak_is_recorded(bench, monkeypatch, tmp_path):
    """A progress bar's latest update (after a carriage return) names the phase the peak fell in."""
    fake = tmp_path / "memcap"
    fake.write_text('#!/bin/sh\nshift\nexec "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(bench, "MEMCAP", fake)
    script = ("import sys, time\n"
              "print('loading', flush=True); time.sleep(1.5)\n"
              "sys.stderr.write('pack 1/2\\rpack 2/2\\r'); sys.stderr.flush()\n"
              "held = bytearray(400 * 2**20); time.sleep(2)\n"
              "del held; print('saved', flush=True); time.sleep(1.5)\n")
    r = bench.run_one([sys.executable, "-c", script], cap=0, trace=tmp_path / "x.json")
    assert r["exit"] == 0 and r["peak_anon_gib"] >= 0.35
    trace = json.loads((tmp_path / "x.json").read_text())
    assert abs(max(k for _, k in trace["anon_kib"]) / 2**20 - r["peak_anon_gib"]) < 0.01
    assert ["loading\n", "pack 1/2\r", "pack 2/2\r", "saved\n"] == [x for _, x in trace["printed"]]
    assert r["peak_during"] == "pack 2/2" and 1.0 < r["peak_at_s"] < r["wall_s"] - 1.0
    assert list(bench.iter_pieces(io.BytesIO(b"a\rb\nc"))) == ["a\r", "b\n", "c"]


def test_a_variant_row_sits_beside_the_standard_one(bench, tmp_path, monkeypatch):
    """Rows are merged per scheme, size and memory settings: a variant never replaces the fitted row."""
    monkeypatch.setattr(bench, "features_of", lambda s, z: {"ram_bytes": 1.0, "work": 1.0})
    monkeypatch.setattr(bench, "write_record", lambda path, data, command: path.write_text(json.dumps(data)))
    row = {"scheme": "gptq-int4", "size": "1B", "exit": 0, "peak_cgroup_gib": 3.0, "peak_anon_gib": 2.0,
           "wall_s": 600.0, "output_bytes": None}
    variant = {**row, "peak_anon_gib": 1.4, "env": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}
    path = tmp_path / "rec.json"
    bench.update([row], "cpu", path)
    bench.update([variant], "cpu", path)
    rows = json.loads(path.read_text())["rows"]
    assert [r["peak_anon_gib"] for r in rows] == [2.0, 1.4]
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")
    monkeypatch.setenv("HOME_UNRELATED", "x")
    assert bench.run_env() == {"MALLOC_MMAP_THRESHOLD_": "4194304"}
    assert "MALLOC_MMAP_THRESHOLD_=4194304" in bench.format_table(rows).splitlines()[-1]


def test_a_trace_folder_that_cannot_be_made_is_refused_before_any_run(bench, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:
        bench.main(["--models", str(tmp_path), "--work", str(tmp_path / "w"), "--trace", str(blocker)])
    assert e.value.code == 2 and "--trace: cannot make the folder" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_rows_from_another_cpu_sit_beside_the_reference_rows(bench, tmp_path, monkeypatch):
    """A row names the CPU that measured it; rows the file held before rows did get the file's CPU,
    and a row from another CPU never replaces the reference CPU's (whose times the fit uses)."""
    monkeypatch.setattr(bench, "features_of", lambda s, z: {"ram_bytes": 1.0, "work": 1.0})
    monkeypatch.setattr(bench, "write_record", lambda path, data, command: path.write_text(json.dumps(data)))
    row = {"scheme": "gptq-int4", "size": "1B", "exit": 0, "peak_cgroup_gib": 3.0, "peak_anon_gib": 2.0,
           "wall_s": 600.0, "output_bytes": None}
    path = tmp_path / "rec.json"
    path.write_text(json.dumps({"cpu": "fast", "rows": [row, {**row, "size": "3B"}]}))  # rows without cpu
    bench.update([{**row, "peak_anon_gib": 1.4, "wall_s": 2400.0}], "slow", path)
    data = json.loads(path.read_text())
    assert [(r["size"], r["cpu"], r["peak_anon_gib"]) for r in data["rows"]] == [
        ("1B", "fast", 2.0), ("1B", "slow", 1.4), ("3B", "fast", 2.0)]
    assert data["cpu"] == "fast"  # the CPU with the most rows
    table = bench.format_table(data["rows"], data["cpu"]).splitlines()
    assert table[2].endswith("[slow]") and not table[1].endswith("]")
