"""The numbers the advisor quotes are the numbers the benchmark scripts wrote (no drift, no invention)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmq.advisor import measured

EVAL = Path(__file__).resolve().parents[2] / "eval"


def test_cpu_speed_is_the_benchmark_output():
    data = json.loads((EVAL / "bench_cpu_speed.json").read_text())
    assert measured.CPU_SPEED["command"] == data["command"] and measured.CPU_SPEED["machine"] == data["machine"]
    assert measured.CPU_SPEED["rows"] == {r["scheme"]: {"decode_x": r["decode_x"], "prefill_x": r["prefill_x"],
                                                        "mode": r["mode"]} for r in data["results"]}
    for r in data["results"]:  # each ratio is its own row's two speeds, measured in one bench call
        assert r["decode_x"] == pytest.approx(r["decode_tok_s"] / r["fp32_decode_tok_s"], rel=2e-3)
        assert r["prefill_x"] == pytest.approx(r["prefill_tok_s"] / r["fp32_prefill_tok_s"], rel=2e-3)


def test_smollm2_quality_is_the_benchmark_output():
    data = json.loads((EVAL / "bench_quantize.json").read_text())
    rows = {r["scheme"]: r for r in data["rows"] if r["size_bytes"] is not None and r["time_s"] is not None}
    assert measured.SMOL_QUALITY["command"] in data["command"]
    assert set(measured.SMOL_QUALITY["rows"]) == set(rows)
    for scheme, m in measured.SMOL_QUALITY["rows"].items():
        assert m["size_bytes"] == rows[scheme]["size_bytes"]
        assert m["ppl_change"] == pytest.approx(rows[scheme]["ppl_delta_pct"] / 100, abs=5e-5)


def test_smollm2_parameter_count_is_the_demo_model_s():
    from llmq.advisor import params
    from llmq.models import demo_gguf_path

    assert measured.SMOL_QUALITY["params"] == params.profile(str(demo_gguf_path())).parameters
