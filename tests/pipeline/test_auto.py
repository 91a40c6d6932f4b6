"""``llmq run --scheme auto`` on the tiny model: one candidate fails the gate, the next passes.

The gate threshold is derived from measured values (the evaluator's own perplexity change for each
candidate), never guessed, so the test checks the selection logic whatever the random weights do.
"""

from __future__ import annotations

import json

import pytest

import llmq
from llmq.meta import read_meta
from llmq.pipeline.auto import run_auto
from llmq.pipeline import auto
from llmq.errors import ConfigError

CANDIDATES = ["bnb-fp4", "bf16"]  # most compressed first: fp4 is ~4x smaller than bf16
EVAL = {"limit": 8, "device": "cpu"}


def run_args(model, out, **gate):
    """The keyword arguments of ``run_auto`` (the library takes no argparse namespace)."""
    return {"model": str(model), "output": out, **EVAL, **gate}


def measured_ppl_increase(model, scheme, tmp_path) -> float:
    """The evaluator's perplexity change for ``scheme``, read through the gate with a huge limit."""
    from llmq.eval import compare
    from llmq.eval.gate import check_gate

    path = llmq.quantize(str(model), scheme, device="cpu").save(tmp_path / f"measure-{scheme}")
    report = compare(str(model), str(path), ppl="wikitext2", tasks=None, limit=8, seqlen=None,
                     out_dir=str(tmp_path / f"measure-{scheme}.eval"))
    gate = check_gate(report, max_ppl_increase="1000%", max_accuracy_loss=None, max_kld=None)
    assert gate.passed
    _, ppl, _ = auto.check_summary(gate.checks)
    assert ppl is not None, gate.checks
    return ppl


@pytest.fixture(scope="module")
def thresholds(tiny_model_dir, tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("auto-measure")
    fp4 = measured_ppl_increase(tiny_model_dir, "bnb-fp4", tmp)
    bf16 = measured_ppl_increase(tiny_model_dir, "bf16", tmp)
    assert bf16 < fp4 and fp4 > 0, (bf16, fp4)
    return bf16, fp4


def test_auto_keeps_the_first_candidate_that_passes(tiny_model_dir, tmp_path, thresholds, capsys):
    bf16, fp4 = thresholds
    gate = (bf16 + fp4) / 2  # between the two measured changes: fp4 must fail, bf16 must pass
    out = tmp_path / "auto"
    code = run_auto(**run_args(tiny_model_dir, out, max_ppl_increase=repr(gate)),
                                 candidates=CANDIDATES)
    assert code == 0
    rep = json.loads((out / "auto_report.json").read_text())
    assert rep["winner"] == "bf16"
    assert [t["scheme"] for t in rep["tried"]] == CANDIDATES
    assert [t["passed"] for t in rep["tried"]] == [False, True]
    assert rep["tried"][0]["size_bytes"] < rep["tried"][1]["size_bytes"]
    assert "smallest candidate that passed" in rep["why"] and "bnb-fp4" in rep["why"]
    assert (out / "auto_report.md").read_text().count("| bnb-fp4 |") == 1
    assert (out / "auto_report.png").stat().st_size > 1000
    # The winner is a complete llmq folder.
    assert read_meta(out)["scheme"] == "bf16"
    assert list(out.glob("*.safetensors"))
    assert not list(tmp_path.glob(".auto.auto-*"))  # work folder cleaned up


def test_auto_exits_1_and_names_the_closest(tiny_model_dir, tmp_path, thresholds):
    _, fp4 = thresholds
    out = tmp_path / "auto-none"
    code = run_auto(**run_args(tiny_model_dir, out, max_ppl_increase=repr(fp4 / 2)),
                                 candidates=["bnb-fp4"])
    assert code == 1
    rep = json.loads((out / "auto_report.json").read_text())
    assert rep["winner"] is None and rep["closest"] == "bnb-fp4"
    assert rep["why"].startswith("No candidate passed the gate. Closest: bnb-fp4")
    assert rep["tried"][0]["score"] == pytest.approx(2.0, rel=0.05)  # measured twice the limit
    assert not list(out.glob("*.safetensors"))


def test_budget_restricts_candidates():
    adv = llmq.advise(7_000_000_000, device="cuda", gpu_memory_gb=80)
    pool = auto.pick_candidates(adv, budget_gb=5.0)
    assert pool and all(c.size.bytes <= 5e9 for c in pool)
    assert [c.size.bytes for c in pool] == sorted(c.size.bytes for c in pool)  # most compressed first
    assert "gptq-int3" not in [c.scheme for c in pool]
    with pytest.raises(ConfigError, match="smallest candidate is"):
        auto.pick_candidates(adv, budget_gb=0.5)


def test_default_candidates_follow_the_advice():
    adv = llmq.advise(50_000_000, device="cuda", gpu_memory_gb=80)
    names = [c.scheme for c in auto.pick_candidates(adv, None)]
    assert names and not any(n in names for n in ("awq-int4", "gptq-int4", "bnb-nf4"))  # <100M: avoid 4-bit


def test_auto_needs_a_gate(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a gate"):
        run_auto(**run_args(tiny_model_dir, tmp_path / "x"))


def test_scheme_overrides_are_filtered_per_scheme():
    ov = {"group_size": 64, "calibration": "builtin", "bits": 3, "skip_modules": ("o_proj",)}
    assert auto.scheme_overrides("bf16", ov) == {}
    assert auto.scheme_overrides("bnb-nf4", ov) == {"skip_modules": ("o_proj",)}
    assert auto.scheme_overrides("gptq-int4", ov) == {"group_size": 64, "calibration": "builtin",
                                                      "skip_modules": ("o_proj",)}


def test_pareto_and_closest():
    T = auto.Trial
    ts = [T("a", 1, 100, False, "x", ppl_increase=0.10, score=2.0), T("b", 1, 200, False, "y", ppl_increase=0.05,
                                                                      score=1.2),
          T("c", 1, 300, False, "z", ppl_increase=0.07, score=1.5)]
    assert auto.pareto(ts) == {"a", "b"}
    assert auto.closest(ts).scheme == "b"


def test_cli_auto_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    from llmq.cli import main

    base = ["run", "--model", str(tiny_model_dir), "--scheme", "auto", "--output", str(tmp_path / "o"), "--device", "cpu"]
    assert main(base) == 2
    assert capsys.readouterr().err.strip() == (
        "llmq: error: --scheme auto needs a gate to choose by: --max-ppl-increase, --max-accuracy-loss or --max-kld.")
    assert main(base + ["--max-ppl-increase", "5%", "--budget-gb", "0.0001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No candidate scheme fits --budget-gb 0.0001; the smallest candidate is" in err[0]
    assert not (tmp_path / "o").exists()


#: a few tiny QAT steps on the local WikiText-2 train text (``--set steps=2`` ... on the CLI)
QAT_STEPS = {"steps": 2, "batch_size": 2, "seqlen": 64, "warmup_steps": 1, "lr": 1e-4, "eval_windows": 1}


def test_auto_without_allow_training_never_trains_and_says_it_could(tiny_model_dir, tmp_path, thresholds):
    _, fp4 = thresholds
    out = tmp_path / "auto-no-train"
    code = run_auto(**run_args(tiny_model_dir, out, max_ppl_increase=repr(fp4 / 2)),
                                 candidates=["bnb-fp4"], overrides=QAT_STEPS)
    assert code == 1
    rep = json.loads((out / "auto_report.json").read_text())
    assert [t["scheme"] for t in rep["tried"]] == ["bnb-fp4"] and not rep["escalated_to_training"]
    assert "--allow-training" in rep["escalation"] and "--allow-training" in (out / "auto_report.md").read_text()


def test_auto_escalates_to_qat_when_every_post_training_candidate_fails(tiny_model_dir, tmp_path, thresholds, capsys):
    """bnb-fp4 fails a gate at half its measured change; with allow_training the search goes on to
    the QAT schemes the advisor lists for this model (4-bit is 'avoid' below 100M parameters, so
    the 8-bit ones), and the first that passes is saved, trained, loadable and explained."""
    _, fp4 = thresholds
    out = tmp_path / "auto-train"
    code = run_auto(**run_args(tiny_model_dir, out, max_ppl_increase=repr(fp4 / 2)),
                                 candidates=["bnb-fp4"], overrides=QAT_STEPS, allow_training=True)
    rep = json.loads((out / "auto_report.json").read_text())
    tried = rep["tried"]
    assert tried[0]["scheme"] == "bnb-fp4" and not tried[0]["passed"] and not tried[0]["trained"]
    assert len(tried) >= 2 and all(t["trained"] and t["scheme"].startswith("qat-") for t in tried[1:])
    assert not any(t["scheme"] in ("qat-int4", "qat-8da4w") for t in tried)  # 'avoid' for <100M, never tried
    assert rep["escalated_to_training"] and "escalated to quantization-aware training" in rep["escalation"]
    assert "escalating to quantization-aware training" in capsys.readouterr().out
    # int8 weights+activations change the random model's perplexity far less than fp4 does
    assert code == 0 and rep["winner"] is not None
    assert rep["winner"] == tried[-1]["scheme"] and "after escalating to quantization-aware training" in rep["why"]
    meta = read_meta(out)
    assert meta["backend"] == "qat" and meta["training"]["steps_done"] == 2
    model, _ = llmq.load(out, device="cpu")  # the torchao plugin loads it (quant_method "torchao")
    from torchao.quantization import IntxUnpackedToInt8Tensor

    assert isinstance(model.model.layers[0].mlp.up_proj.weight, IntxUnpackedToInt8Tensor)
