"""Size estimates against the bytes llmq actually writes (within 5%; in practice within 0.1%)."""

from __future__ import annotations

import time

import pytest

from llmq.advisor import estimate, params
from llmq.models import folder_size

#: GPTQ/AWQ on the tiny model: the size does not depend on calibration quality
CALIB = dict(n_samples=4, seqlen=64, group_size=64, calibration="builtin")


def _write(src, scheme, out, **kw):
    import llmq

    t0 = time.perf_counter()
    qm = llmq.quantize(str(src), scheme, device="cpu", **kw)
    path = qm.save(out / scheme)
    return folder_size(path), qm.meta["size_bytes"]["after"], time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fp16", "int8-dynamic", "bnb-int8", "bnb-nf4"])
def test_estimate_matches_smollm2_folder(smol_dir, smol_quantized, scheme):
    import json

    folder = smol_quantized(scheme)
    real = folder_size(folder)
    assert real == json.loads((folder / "llmq.json").read_text())["size_bytes"]["after"]  # llmq.json tells the truth
    est = estimate.estimate_scheme(params.profile(str(smol_dir)), scheme)
    assert est.bytes == pytest.approx(real, rel=0.05)
    # Not just a loose 5%: the formulas mirror the stored tensors.
    assert est.bytes == pytest.approx(real, rel=0.002), (scheme, est.breakdown)


@pytest.mark.slow
def test_gguf_and_folder_profiles_estimate_the_same(smol_dir):
    from llmq.models import demo_gguf_path

    a = params.profile(str(smol_dir))
    b = params.profile(str(demo_gguf_path()))
    for s in ("fp16", "bnb-nf4", "gptq-int4", "awq-int4"):
        assert estimate.estimate_scheme(a, s).bytes == pytest.approx(estimate.estimate_scheme(b, s).bytes, rel=0.001)


@pytest.mark.parametrize("scheme,kw", [
    ("bf16", {}),
    ("bnb-fp4", {}),
    ("bnb-nf4", {"double_quant": False}),
    ("gptq-int4", CALIB),
    ("gptq-int8", CALIB),
    ("awq-int4", CALIB),
])
def test_estimate_matches_tiny_model_folder(tiny_model_dir, tmp_path, scheme, kw):
    real, _, _ = _write(tiny_model_dir, scheme, tmp_path, **kw)
    est = estimate.estimate_scheme(params.profile(str(tiny_model_dir)), scheme, device="cpu", **kw)
    assert est.bytes == pytest.approx(real, rel=0.05), (scheme, real, est.breakdown)


def test_lm_head_and_embeddings_stay_full_precision(tiny_model_dir):
    prof = params.profile(str(tiny_model_dir))
    for s in ("bnb-int8", "bnb-nf4", "gptq-int4", "awq-int4"):
        e = estimate.estimate_scheme(prof, s)
        assert e.kept_params >= prof.embedding_params + prof.other_params
        assert e.quantized_params == prof.linear_params  # tiny Llama: every Linear is in a layer
    for s in ("int8-dynamic", "int8-static"):  # issue #11: int8 per-row embeddings (tied: once)
        e = estimate.estimate_scheme(prof, s)
        assert e.quantized_params == prof.linear_params + prof.embedding_params
        assert estimate.estimate_scheme(prof, s, quantize_embeddings=False).kept_params >= prof.embedding_params


def test_bits_per_weight_include_overhead():
    prof = params.profile(7_000_000_000)  # large layers: per-layer code books are negligible
    bpw = {s: estimate.estimate_scheme(prof, s).bits_per_weight for s in ("bnb-int8", "bnb-nf4", "gptq-int4")}
    g64 = estimate.estimate_scheme(prof, "gptq-int4", group_size=64).bits_per_weight
    assert 8 < bpw["bnb-int8"] < 8.5
    # nf4 with double quant: 4 + 8/64 (8-bit absmax) + 32/(64*256) (fp32 second level).
    assert bpw["bnb-nf4"] == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=0.001)
    nodq = estimate.estimate_scheme(prof, "bnb-nf4", double_quant=False).bits_per_weight
    assert nodq == pytest.approx(4 + 32 / 64, abs=0.001)  # fp32 absmax per 64 weights
    # GPTQ g128 (default): 4 + (16-bit scale + 4-bit zero) / 128, plus a 32-bit g_idx per input row.
    gidx = sum(32 * l.in_features for l in prof.linears) / prof.linear_params
    assert bpw["gptq-int4"] == pytest.approx(4 + 20 / 128 + gidx, abs=0.001)
    assert g64 > bpw["gptq-int4"]  # smaller groups, more scales


def test_memory_grows_with_context(tiny_model_dir):
    prof = params.profile(str(tiny_model_dir))
    e = estimate.estimate_scheme(prof, "bf16")
    short = estimate.memory(prof, e, context=256)
    long = estimate.memory(prof, e, context=4096)
    assert long.kv_cache == 16 * short.kv_cache
    assert short.kv_cache == 2 * prof.layers * prof.kv_heads * prof.head_dim * 256 * 2
    assert long.total > short.total > e.bytes
