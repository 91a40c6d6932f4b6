"""Said before the first weight loads: the projected cost of quantizing, from the shipped cost model
(``llmq/scale_costs.json``, fitted by scripts/bench_scale.py), and a one-line refusal naming what fits."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmq.pipeline.resources import NotEnoughMemory, check_resources
from llmq.schemes import get_scheme
from llmq.testing import SCALE_SHAPES

ROOT = Path(__file__).resolve().parents[2]
CALIB = {"calibration": "wikitext2", "n_samples": 16, "seqlen": 512}


@pytest.fixture(scope="module")
def llama7b_config(tmp_path_factory) -> Path:
    """A folder with only the config of bench_scale's 7B model (no weights: sizing reads the config)."""
    from transformers import LlamaConfig

    s = SCALE_SHAPES["7B"]
    out = tmp_path_factory.mktemp("cfg") / "llama-7b-config"
    LlamaConfig(vocab_size=49152, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                tie_word_embeddings=s["tie"], dtype="bfloat16", architectures=["LlamaForCausalLM"]
                ).save_pretrained(out)
    return out


def _check(path: Path, name: str, available: float, **over):
    sch = get_scheme(name)
    src = SimpleNamespace(path=path, name=str(path), revision=None, trust_remote_code=False)
    notes: list[str] = []
    p = check_resources(src, sch, sch.config(**over), sch.backend_cls(), "cpu", note=notes.append,
                        available_gib=available)
    return p, notes


def _measured(scheme: str, size: str = "7B") -> dict:
    rows = json.loads((ROOT / "eval" / "bench_scale.json").read_text())["rows"]
    return next(r for r in rows if r["scheme"] == scheme and r["size"] == size)


@pytest.mark.parametrize("scheme,over", [("int8-static", CALIB), ("int8-dynamic", {}), ("gguf-q8_0", {})])
def test_projection_of_7b_matches_the_measured_run(llama7b_config, scheme, over):
    """The shipped projection for the 7B shape is within 25% of bench_scale's measured peak and time."""
    p, notes = _check(llama7b_config, scheme, available=64.0, **over)
    row = _measured(scheme)
    assert abs(p.ram_gib / row["peak_anon_gib"] - 1) < 0.25, (p, row["peak_anon_gib"])
    assert abs(p.wall_s / row["wall_s"] - 1) < 0.25, (p, row["wall_s"])
    assert len(notes) == 1 and notes[0].startswith("llmq: projected on this machine:") and "for 6.88B parameters" in notes[0]


def test_refuses_in_one_line_naming_schemes_that_fit(llama7b_config):
    with pytest.raises(NotEnoughMemory) as e:
        _check(llama7b_config, "int8-static", available=6.0, **CALIB)
    msg = str(e.value)
    assert "\n" not in msg and "int8-static on this model needs about" in msg and "6.0 GiB is available" in msg
    fits = msg.split("schemes that fit: ")[1].split(";")[0]
    assert "gguf-q8_0" in fits and "int8-static" not in fits  # measured at 1.9 GiB for this shape
    assert "--n-samples" in msg and "--no-memory-check" in msg


def test_gpu_jobs_are_not_checked_against_ram(llama7b_config):
    sch = get_scheme("int8-static")
    src = SimpleNamespace(path=llama7b_config, name="x", revision=None, trust_remote_code=False)
    assert check_resources(src, sch, sch.config(**CALIB), sch.backend_cls(), "cuda", available_gib=0.1) is None


@pytest.mark.parametrize("scheme,over,words", [
    ("int8-dynamic", {"format": "compressed-tensors"}, "writing int8-dynamic as compressed-tensors"),
    ("gptq-int4", {**CALIB, "format": "compressed-tensors"}, "writing gptq-int4 as compressed-tensors"),
    ("fp8", {}, "fp8 holds the whole model in memory"),
    ("qat-int4", {}, "qat-int4 holds the whole model in memory"),
])
def test_whole_model_jobs_that_cannot_fit_are_refused_by_formula(llama7b_config, scheme, over, words):
    """Jobs that hold the whole 7B model (an export to compressed-tensors, fp8, QAT) have no measured
    cost model; their plugin's formula refuses them in one line instead of a kill half way."""
    with pytest.raises(NotEnoughMemory) as e:
        _check(llama7b_config, scheme, available=20.0, **over)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and "20.0 GiB is available" in msg and "--no-memory-check" in msg


def test_the_same_export_of_the_demo_fits(llama7b_config):
    from llmq.models import resolve_model

    demo = resolve_model(None).local_dir()
    p, notes = _check(demo, "int8-dynamic", available=8.0, format="compressed-tensors")
    assert p is not None and p.ram_gib < 8.0  # the measured projection, then the export's formula, both fit


@pytest.mark.parametrize("native,said", [(False, True), (True, False), (None, False)])
def test_a_cpu_without_native_bf16_is_warned_for_gptq(llama7b_config, monkeypatch, native, said):
    """GPTQ's calibration forwards run in bf16: the demo's gptq-int4 took 571 s on an AVX2-only CPU
    against 106 s on the AVX512-BF16 CPU the times were fitted on; the projection says so there."""
    from llmq import cost, hardware

    real = cost.load_coefficients()
    monkeypatch.setattr(cost, "load_coefficients", lambda *a: {**real, "cpu": "AMD EPYC (avx512_vnni, avx512_bf16)"})
    monkeypatch.setattr(hardware, "native_bf16", lambda *a: native)
    _, notes = _check(llama7b_config, "gptq-int4", available=64.0, **CALIB)
    assert any("no native bf16" in n for n in notes) is said
    _, notes = _check(llama7b_config, "int8-dynamic", available=64.0)  # no calibration matmuls in bf16
    assert not any("no native bf16" in n for n in notes)
