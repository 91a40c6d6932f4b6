"""llmq.cost: the fit that run/advise project from, on rows whose truth is known."""

from __future__ import annotations

import json

import pytest

from llmq import cost

GIB = 1024**3
SIZES = ("demo", "1B", "3B", "7B")
#: per size: the plugin's (ram_bytes, work); the "measured" peak/wall are exact lines in them
FEATS = {"demo": (0.2 * GIB, 1.35e8), "1B": (0.9 * GIB, 1.2e9), "3B": (1.6 * GIB, 3.2e9), "7B": (2.4 * GIB, 6.7e9)}


def _features(scheme: str, size: str) -> dict:
    ram, work = FEATS[size]
    return cost.CostFeatures(ram, work).as_dict()


def _rows(bend: float = 0.0) -> list[dict]:
    """peak = 0.5 + 1.5 * ram GiB, wall = 10 + 2e-8 * work (7B's wall off the line by ``bend``)."""
    rows = []
    for s in SIZES:
        ram, work = FEATS[s]
        wall = (10 + 2e-8 * work) * (1 + (bend if s == "7B" else 0))
        rows.append({"scheme": "x", "size": s, "exit": 0, "peak_anon_gib": 0.5 + 1.5 * ram / GIB, "wall_s": wall})
    return rows


def test_fit_checks_on_the_largest_size_it_did_not_see():
    fit = cost.fit_rows(_rows(bend=0.5), _features)["x"]
    assert fit["fitted_on"] == ["demo", "1B", "3B"] and fit["checked_on"] == "7B"
    assert fit["check"]["ram_error"] == pytest.approx(0, abs=1e-3)
    # the 7B wall is 1.5x the line through the smaller sizes: the check reports -1/3, not 0
    assert fit["check"]["wall_error"] == pytest.approx(1 / 1.5 - 1, abs=1e-3)


def test_shipped_coefficients_use_every_size(tmp_path):
    """What run/advise project from includes the largest measurement: a bent 7B moves the line."""
    rows = _rows(bend=0.5)
    fit = cost.fit_rows(rows, _features)
    path = tmp_path / "costs.json"
    cost.write_coefficients(fit, source="rows", path=path)
    data = json.loads(path.read_text())
    assert data["schemes"]["x"]["sizes"] == list(SIZES)
    p = cost.project("x", cost.CostFeatures(*FEATS["7B"]), data)
    held_out = fit["x"]["check"]["wall_s"][0]
    assert abs(p.wall_s - rows[-1]["wall_s"]) < abs(held_out - rows[-1]["wall_s"])
    assert p.ram_gib == pytest.approx(rows[-1]["peak_anon_gib"], rel=1e-3)


def test_fewer_than_three_sizes_scale_from_the_largest_run_and_failed_runs_count_for_nothing():
    rows = _rows()
    rows[1]["exit"] = 137  # killed for memory: not a measurement of the scheme's cost
    rows[3]["exit"] = 137
    fit = cost.fit_rows(rows, _features)["x"]  # demo and 3B left: too few to fit a line
    assert fit["one_size"] and fit["fitted_on"] == ["3B"] and fit["check"] is None
    ram, work = FEATS["3B"]
    assert fit["wall"] == [0.0, pytest.approx(rows[2]["wall_s"] / work)]
    assert fit["ram"] == [0.0, pytest.approx(rows[2]["peak_anon_gib"] / (ram / GIB))]
    assert cost.fit_rows([r for r in rows if r["exit"] != 0], _features) == {}
    assert cost.project("x", cost.CostFeatures(1.0, 1.0), {"schemes": {}}) is None


def test_a_run_stopped_after_some_layers_projects_from_them(tmp_path):
    """GPTQ/AWQ at 7B: a run stopped by --timeout carries its layers' projected total."""
    row = {"scheme": "awq", "size": "7B", "exit": "timeout", "peak_anon_gib": 4.8, "wall_s": 1800.0,
           "layers": {"projected_total_s": 36000}}
    fit = cost.fit_rows([row], _features)
    assert fit["awq"]["projected"] == ["7B"] and fit["awq"]["wall"][1] == pytest.approx(36000 / FEATS["7B"][1])
    path = tmp_path / "costs.json"
    cost.write_coefficients(fit, source="rows", path=path)
    data = json.loads(path.read_text())
    p = cost.project("awq", cost.CostFeatures(*FEATS["3B"]), data)
    assert p.wall_s == pytest.approx(36000 * FEATS["3B"][1] / FEATS["7B"][1])
    assert "scaled from its 7B run alone" in p.basis
    del row["layers"]  # stopped before a layer finished: nothing to scale from
    assert cost.fit_rows([row], _features) == {}


def test_sizes_stopped_by_timeout_count_in_the_fit_with_their_projection(tmp_path):
    """AWQ at 1B/3B/7B is stopped after some layers; those sizes fit (and check) with the total their
    layers projected, and a completed run of the same size is preferred to a projection."""
    rows = _rows()
    for r in rows[1:]:
        r.update(exit="timeout", layers={"projected_total_s": r["wall_s"]}, wall_s=1200.0)
    rows.append({**_rows()[1], "wall_s": _rows()[1]["wall_s"]})  # 1B also completed once
    fit = cost.fit_rows(rows, _features)["x"]
    assert fit["fitted_on"] == ["demo", "1B", "3B"] and fit["checked_on"] == "7B"
    assert fit["projected"] == ["3B", "7B"]
    assert fit["check"]["wall_error"] == pytest.approx(0, abs=1e-3)  # 1200 s would be far off the line
    path = tmp_path / "costs.json"
    cost.write_coefficients({"x": fit}, source="rows", path=path)
    p = cost.project("x", cost.CostFeatures(*FEATS["7B"]), json.loads(path.read_text()))
    assert "x's time at 3B, 7B projected from the layers run" in p.basis and "alone" not in p.basis
    for r in rows:
        r["peak_anon_gib"] = None if r["exit"] != 0 else r["peak_anon_gib"]  # no peak sampled: not a measurement
    assert cost.fit_rows(rows, _features)["x"]["fitted_on"] == ["1B"]  # demo and 1B left: too few for a line


def test_rows_that_check_a_whole_model_formula_are_not_fitted():
    """fp8 and compressed-tensors exports are refused by their plugin's formula; their rows check it."""
    row = {"scheme": "fp8", "size": "1B", "exit": 0, "peak_anon_gib": 7.3, "wall_s": 79.0, "formula_gib": 7.97}
    assert cost.fit_rows([row], _features) == {}
    # nor the 7B widths with 2 layers (the end of an AWQ run, measured for its peak): not a model size
    end = {"scheme": "x", "size": "7B-2L", "exit": 0, "peak_anon_gib": 7.0, "wall_s": 1500.0}
    assert cost.fit_rows(_rows() + [end], _features) == cost.fit_rows(_rows(), _features)


def test_human_time():
    assert cost.human_time(45) == "45 s" and cost.human_time(600) == "10 min" and cost.human_time(7200) == "2.0 h"


def test_runs_under_changed_memory_settings_are_not_fitted():
    """A row made with e.g. glibc's mmap threshold set (``env``) measures a variant, not the scheme."""
    rows = _rows()
    variant = {**rows[3], "peak_anon_gib": 99.0, "env": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}
    assert cost.fit_rows(rows + [variant], _features) == cost.fit_rows(rows, _features)


def test_times_come_from_the_reference_cpu_and_peaks_from_the_newest_run():
    """GPTQ remeasured on a CPU without native bf16 (calibration several times slower) after its
    peak fell: the fit keeps the reference CPU's times and takes the newer peaks."""
    rows = [{**r, "cpu": "fast", "when": "2026-01-01"} for r in _rows()]
    newer = [{**r, "cpu": "slow", "when": "2026-02-01", "wall_s": r["wall_s"] * 5,
              "peak_anon_gib": r["peak_anon_gib"] * 0.8} for r in _rows()]
    base = cost.fit_rows(rows, _features)["x"]
    fit = cost.fit_rows(rows + newer[:2] + rows[:1], _features)["x"]  # more "fast" rows: the reference
    assert fit["wall"] == base["wall"] and fit["check"]["wall_s"] == base["check"]["wall_s"]
    assert fit["check"]["ram_gib"][1] == base["check"]["ram_gib"][1]  # 7B: no newer row
    assert fit["ram"] != base["ram"] and fit["peaks_on_other_cpu"] == {"demo": "slow", "1B": "slow"}
    assert cost.reference_cpu(rows + newer[:2]) == "fast" and cost.reference_cpu([]) is None
