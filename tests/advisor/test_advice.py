"""The decision tree and the rule of thumb on a grid of (parameters, device, memory) cases.

Memory limits are derived from the advisor's own estimates (e.g. "between what 8-bit and 16-bit
need"), so the cases test the decisions, not the constants.
"""

from __future__ import annotations

import json

import pytest

import llmq
from llmq.advisor import advice, rules
from llmq.advisor.estimate import estimate_scheme, memory
from llmq.advisor.params import profile
from llmq.errors import ConfigError
from llmq.hardware import GB
from llmq.schemes import SCHEMES, get_scheme


def need_gib(n: int, scheme: str, context: int = 2048) -> float:
    p = profile(n)
    return memory(p, estimate_scheme(p, scheme), context=context, device="cuda").total / GB


def between(n: int, low: str, high: str) -> float:
    a, b = need_gib(n, low), need_gib(n, high)
    assert a < b
    return (a + b) / 2


def rec(adv) -> str:
    assert adv.recommended is not None, [(c.scheme, c.status) for c in adv.candidates]
    return adv.recommended.scheme


def status(adv, scheme: str) -> str:
    return next(c.status for c in adv.candidates if c.scheme == scheme)


def precision(scheme: str) -> str:
    return rules.ROLES[scheme].precision


def cpu_rows(monkeypatch, rows: dict) -> None:
    """Stand-in for measured.CPU_SPEED's rows: {scheme: (decode_x, prefill_x)}."""
    monkeypatch.setitem(rules.MEASURED_CPU_SPEED, "rows",
                        {s: {"decode_x": d, "prefill_x": p, "mode": "m"} for s, (d, p) in rows.items()})


def test_7b_on_cpu_without_measurements_follows_the_tree(monkeypatch):
    cpu_rows(monkeypatch, {})
    adv = llmq.advise(7_000_000_000, device="cpu", ram_gb=64)
    assert adv.situation == "cpu" and rec(adv) == "int8-dynamic"
    assert "CPU only -> int8-dynamic" in " ".join(adv.recommended.reasons)


def test_cpu_recommendation_is_the_fastest_measured_scheme_the_rules_allow(monkeypatch):
    """Issue #10: on CPU the measured table decides (a GGUF file when llama.cpp is fastest), not a
    hard-coded preference; the rule of thumb still warns 4-bit away from 100M-1B models."""
    cpu_rows(monkeypatch, {"int8-dynamic": (1.5, 2.0), "gguf-q8_0": (4.0, 1.8), "gguf-q4_k_m": (6.0, 1.6),
                           "bnb-nf4": (0.5, 0.9)})
    assert rec(llmq.advise(7_000_000_000, device="cpu", ram_gb=64)) == "gguf-q4_k_m"
    small = llmq.advise(300_000_000, device="cpu", ram_gb=16)
    assert rec(small) == "gguf-q8_0" and status(small, "gguf-q4_k_m") == "warn"
    assert [c.scheme for c in small.candidates[:2]] == ["gguf-q8_0", "int8-dynamic"]
    cpu_rows(monkeypatch, {"int8-dynamic": (9.0, 2.0), "gguf-q8_0": (4.0, 1.8), "gguf-q4_k_m": (6.0, 1.6)})
    assert rec(llmq.advise(7_000_000_000, device="cpu", ram_gb=64)) == "int8-dynamic"
    assert rec(llmq.advise(7_000_000_000, device="cuda", gpu_memory_gb=80)) in ("bf16", "fp16")  # GPU: not this table


def test_7b_on_80gb_gpu_is_16bit():
    adv = llmq.advise(7_000_000_000, device="cuda", gpu_memory_gb=80)
    assert adv.situation == "gpu_fits" and rec(adv) in ("bf16", "fp16")
    assert all(c.fits for c in adv.candidates)


def test_70b_on_80gb_gpu_is_8_or_4_bit():
    adv = llmq.advise(70_000_000_000, device="cuda", gpu_memory_gb=80)
    assert precision(rec(adv)) in ("8", "4")
    assert status(adv, "bf16") == status(adv, "fp16") == "does not fit"
    # 10B+: the rule says excellent for 4-bit; 4-bit candidates are offered, not warned.
    assert status(adv, "awq-int4") in ("ok", "recommended")


def test_too_large_for_16bit_prefers_8bit_for_accuracy():
    n = 13_000_000_000
    adv = llmq.advise(n, device="cuda", gpu_memory_gb=between(n, "bnb-int8", "bf16"))
    assert adv.situation == "gpu_8bit" and rec(adv) in ("bnb-int8", "gptq-int8")
    four = [c for c in adv.candidates if precision(c.scheme) == "4"]
    assert four and all(c.fits and "max compression" in " ".join(c.reasons) for c in four)


def test_only_4bit_fits_recommends_a_serving_4bit_scheme():
    n = 7_000_000_000
    adv = llmq.advise(n, device="cuda", gpu_memory_gb=between(n, "gptq-int4", "bnb-int8"))
    assert adv.situation == "gpu_4bit" and rec(adv) in ("awq-int4", "gptq-int4")
    assert status(adv, "bnb-int8") == "does not fit"


def test_135m_prefers_8bit_and_warns_on_4bit():
    n = 135_000_000
    adv = llmq.advise(n, device="cuda", gpu_memory_gb=between(n, "bnb-int8", "bf16"))
    assert precision(rec(adv)) == "8"
    for s in ("awq-int4", "gptq-int4", "bnb-nf4"):
        c = next(c for c in adv.candidates if c.scheme == s)
        assert c.status == "warn" and "prefer 8-bit" in " ".join(c.reasons)
        assert c.loss == (2.0, 5.0)
        assert c.rank > adv.recommended.rank


def test_50m_avoids_4bit_even_when_it_would_fit():
    n = 50_000_000
    adv = llmq.advise(n, device="cuda", gpu_memory_gb=80)
    for s in ("awq-int4", "gptq-int4", "bnb-nf4", "bnb-fp4", "gptq-int3"):
        assert status(adv, s) == "avoid"
    assert precision(rec(adv)) == "16"
    usable = [c.rank for c in adv.candidates if c.status in ("recommended", "ok", "warn")]
    avoided = [c.rank for c in adv.candidates if c.status == "avoid"]
    assert max(usable) < min(avoided)
    # Only 4-bit fits among the transformers formats: the advisor recommends nothing rather than
    # contradict the rule. (llama.cpp's Q8_0 also quantizes the embeddings, so it fits there as an
    # 8-bit choice and is recommended over the avoided 4-bit schemes.)
    mem = between(n, "gptq-int4", "bnb-int8")
    assert rec(llmq.advise(n, device="cuda", gpu_memory_gb=mem)) == "gguf-q8_0"
    adv = llmq.advise(n, device="cuda", gpu_memory_gb=mem,
                      schemes=[s for s in SCHEMES if get_scheme(s).backend_cls().runtime == "transformers"])
    assert adv.recommended is None
    assert status(adv, "gptq-int4") == "avoid" and status(adv, "bnb-int8") == "does not fit"
    assert "avoid 4-bit (5-15% loss)" in " ".join(next(c for c in adv.candidates if c.scheme == "gptq-int4").reasons)


@pytest.mark.parametrize("n,band", [(50e6, "<100M"), (135e6, "100M-1B"), (7e9, "1B-10B"), (70e9, "10B+")])
def test_size_bands(n, band):
    assert rules.size_band(n).label == band
    assert llmq.advise(int(n), device="cpu", ram_gb=1000).band.label == band


def test_tolerance_filters_by_expected_loss():
    n = 135_000_000
    adv = llmq.advise(n, device="cuda", gpu_memory_gb=80, tolerance="1%")
    assert status(adv, "gptq-int4") == "exceeds tolerance"  # 2-5% > 1%
    assert status(adv, "bnb-int8") == "ok"  # 0-1%
    adv = llmq.advise(7_000_000_000, device="cuda", gpu_memory_gb=between(7_000_000_000, "gptq-int4", "bnb-int8"),
                      tolerance=0.02)
    assert rec(adv) in ("awq-int4", "gptq-int4") and adv.recommended.status == "recommended"
    assert "may exceed tolerance 2%" in " ".join(adv.recommended.reasons)  # 1-3% straddles 2%


def test_longer_context_needs_more_memory():
    a = llmq.advise(7_000_000_000, device="cuda", gpu_memory_gb=80, context=2048)
    b = llmq.advise(7_000_000_000, device="cuda", gpu_memory_gb=80, context=32768)
    ma = next(c.memory for c in a.candidates if c.scheme == "bf16")
    mb = next(c.memory for c in b.candidates if c.scheme == "bf16")
    assert mb.kv_cache == 16 * ma.kv_cache and mb.weights == ma.weights


def test_output_is_complete_and_serializable(monkeypatch):
    cpu_rows(monkeypatch, {})
    adv = llmq.advise(7_000_000_000, device="cpu", ram_gb=64)
    d = json.loads(json.dumps(adv.to_dict()))
    assert d["recommended"] == "int8-dynamic"
    assert d["size_band"]["source"] == rules.RULE_SOURCE
    assert len(d["candidates"]) == len(rules.ROLES)
    for c in d["candidates"]:
        assert c["size_bytes"] > 0 and c["memory_bytes"] > c["size_bytes"]
        assert c["reasons"] and c["command"].startswith("python -m llmq run --model <your-model> --scheme ")
    md = adv.to_markdown()
    assert "| 1 | int8-dynamic | recommended |" in md


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        llmq.advise(7_000_000_000, device="cpu", context=0)
    with pytest.raises(ConfigError):
        llmq.advise(7_000_000_000, device="cpu", tolerance="lots")
    with pytest.raises(ConfigError):
        llmq.advise(7_000_000_000, device="tpu")


def test_real_model_advice_on_this_machine(tiny_model_dir, monkeypatch):
    cpu_rows(monkeypatch, {})
    adv = llmq.advise(str(tiny_model_dir), device="cpu")
    assert adv.profile.source == "headers"
    assert rec(adv) == "int8-dynamic"
    assert adv.candidates[0].command == f"python -m llmq run --model {tiny_model_dir} --scheme int8-dynamic --device cpu"


def test_measured_cpu_facts_are_quoted_on_cpu(monkeypatch):
    cpu_rows(monkeypatch, {"bnb-nf4": (0.25, 0.5), "int8-dynamic": (0.5, 1.5), "bnb-int8": (2.0, 2.0)})
    adv = llmq.advise(1_000_000_000, device="cpu", ram_gb=64)
    reasons = {c.scheme: " ".join(c.reasons) for c in adv.candidates}
    assert "saves memory, not time: measured 0.25x fp32 decode speed, 0.50x prefill" in reasons["bnb-nf4"]
    assert "depends on the phase: measured 0.50x fp32 decode speed, 1.50x prefill" in reasons["int8-dynamic"]
    assert "measured 2.00x fp32 decode speed, 2.00x prefill" in reasons["bnb-int8"]
    assert "saves memory" not in reasons["bnb-int8"] and "phase" not in reasons["bnb-int8"]
    ranked = next(n for n in adv.notes if n.startswith("CPU candidates are ranked by measured decode speed"))
    assert "bnb-int8 2.00x, int8-dynamic 0.50x, bnb-nf4 0.25x" in ranked
    slow = next(n for n in adv.notes if n.startswith("not simply a CPU speed-up here"))
    assert "bnb-nf4" in slow and "int8-dynamic" in slow and "bnb-int8" not in slow
    assert advice.measured_cpu_note("gptq-int4") is None


def test_our_smollm2_measurement_is_quoted_in_its_size_band_only():
    import llmq
    from llmq.advisor import measured

    four = min(r["ppl_change"] for s, r in measured.SMOL_QUALITY["rows"].items() if s in ("gptq-int4", "awq-int4"))
    small = [n for n in llmq.advise(300_000_000, device="cpu", ram_gb=16).notes if "measured on SmolLM2-135M" in n]
    assert len(small) == 1 and f"+{four * 100:.1f}%" in small[0] and "rule of thumb's 2-5%" in small[0]
    assert not [n for n in llmq.advise(7_000_000_000, device="cpu", ram_gb=64).notes if "SmolLM2-135M (this" in n]


def test_never_recommends_a_scheme_larger_than_bf16(tmp_path, monkeypatch):
    """Issue #11: on a Gemma-3-like layout (262k vocabulary, small decoder) a scheme that keeps the
    embedding in fp32 outweighs bf16; the advisor must not recommend it, whatever the ranking. Every
    default int8 scheme now stores embeddings int8, so the fat candidate is int8-dynamic with
    ``quantize_embeddings=False`` (what it used to write)."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True).save_pretrained(tmp_path)
    prof = profile(str(tmp_path))
    bf16 = estimate_scheme(prof, "bf16", device="cpu").bytes
    defaults = {s: estimate_scheme(prof, s, device="cpu").bytes for s in ("int8-dynamic", "qat-w8a8", "qat-8da4w", "qat-int8")}
    assert all(b < bf16 for b in defaults.values()), (defaults, bf16)  # no default 8-bit/4-bit torchao scheme is fat
    fat = estimate_scheme(prof, "int8-dynamic", device="cpu", quantize_embeddings=False).bytes
    assert fat > bf16  # the situation the rule is for

    real = advice.estimate_scheme

    def fp32_embeddings(p, s, **kw):
        return real(p, s, **({"quantize_embeddings": False} if s == "int8-dynamic" else {}), **kw)

    monkeypatch.setattr(advice, "estimate_scheme", fp32_embeddings)
    adv = advice.advise(str(tmp_path), device="cpu", ram_gb=64, schemes=["int8-dynamic", "qat-w8a8", "bf16"])
    sizes = {c.scheme: c.size.bytes for c in adv.candidates}
    assert sizes["int8-dynamic"] == fat
    assert adv.recommended is not None and sizes[adv.recommended.scheme] <= bf16
    bigger = [c for c in adv.candidates if c.size.bytes > bf16]
    assert [c.scheme for c in bigger] == ["int8-dynamic"], sizes
    assert bigger[0].status == "avoid" and any("larger than bf16" in r for r in bigger[0].reasons)


def test_gpu_advice_quotes_the_measured_gpu_bench():
    """On a GPU the advice carries eval/gpu/bench.json's ratios (llmq bench on an H100), not a prior."""
    import json
    from pathlib import Path

    from llmq.advisor import measured

    adv = llmq.advise(1_100_000_000, device="cuda", gpu_memory_gb=80)
    text = "\n".join(adv.notes)
    bench = json.loads((Path(__file__).resolve().parents[2] / "eval" / "gpu" / "bench.json").read_text())
    nf4 = next(r for r in bench["rows"] if r["model"] == "bnb-nf4" and r["batch"] == 1)
    assert measured.GPU_SPEED["rows"]["bnb-nf4"]["1"]["decode_x"] == nf4["ratios"]["decode"]
    assert f"bnb-nf4 {nf4['ratios']['decode']:.2f}x at batch 1" in text
    assert "int8-dynamic" in text.split("did not finish")[-1]
    assert "measured GPU" not in "\n".join(llmq.advise(1_100_000_000, device="cpu", ram_gb=16).notes)
