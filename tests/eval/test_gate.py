import pytest

from llmq.errors import ConfigError
from llmq.eval.gate import check_gate
from llmq.config import parse_increase


def report(ppl=(20.0, 21.0), acc=(0.60, 0.585), kld=0.02):
    side = lambda p, a: {"perplexity": {"value": p}, "tasks": {"arc_easy": {"acc": a, "acc_norm": None}}}  # noqa: E731
    q = side(ppl[1], acc[1])
    q["kld"] = None if kld is None else {"mean": kld}
    return {"original": side(ppl[0], acc[0]), "quantized": q}


def test_thresholds_parse():
    assert parse_increase("5%") == pytest.approx(0.05)
    assert parse_increase(0.05) == parse_increase("0.05") == pytest.approx(0.05)
    assert parse_increase(None) is None
    for bad in ("5", "five", "-1%"):
        with pytest.raises(ConfigError):
            parse_increase(bad)


def test_ppl_gate_fails_and_names_the_metric():
    g = check_gate(report(), max_ppl_increase="4%")  # +5%
    assert not g.passed and g.verdict.startswith("FAIL: perplexity +5.00%") and "\n" not in g.verdict
    assert g.checks[0]["value"] == pytest.approx(0.05) and g.checks[0]["name"] == "ppl_increase"
    assert check_gate(report(), max_ppl_increase="6%").passed


def test_accuracy_gate_in_points():
    assert not check_gate(report(), max_accuracy_loss=1.0).passed  # lost 1.5 points
    g = check_gate(report(), max_accuracy_loss=2.0)
    assert g.passed and "arc_easy accuracy -1.50 points" in g.verdict


def test_kld_gate_and_unmeasured_metrics_fail():
    assert check_gate(report(), max_kld=0.03).passed
    g = check_gate(report(), max_kld=0.01)
    assert not g.passed and "KL divergence" in g.verdict
    g = check_gate(report(kld=None), max_kld=1.0)
    assert not g.passed and "not measured" in g.verdict
    r = report()
    r["quantized"]["tasks"] = {}
    assert "no task accuracy" in check_gate(r, max_accuracy_loss=5).verdict


def test_first_failure_is_named_and_others_counted():
    g = check_gate(report(), max_ppl_increase="1%", max_accuracy_loss=0.5, max_kld=0.001)
    assert not g.passed and g.verdict.startswith("FAIL: perplexity") and "(and 2 more)" in g.verdict
    assert [c["passed"] for c in g.checks] == [False, False, False]
    assert check_gate(report()).verdict == "PASS (no gate set)"
