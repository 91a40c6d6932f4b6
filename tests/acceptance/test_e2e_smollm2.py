"""One end-to-end run per scheme family on the real SmolLM2-135M-Instruct with real data.

Quantize -> save -> reload with llmq.load (plain transformers) -> perplexity on a WikiText-2 test
slice (seqlen 512, first 4 windows, 2,044 scored tokens). Calibrated schemes use 16 windows of 256
tokens from the WikiText-2 *valid* split (AWQ: 8; small, to keep CI fast; the README's table uses 64x512).

Bounds, relative to the original's perplexity on the same slice:
- fp16: +1% (a cast; rounding only);
- 8-bit schemes: +5% (the issue's quality floor for 8-bit); int8-static (calibrated): +3%;
- 4-bit: the naive baseline computed here (asymmetric round-to-nearest, group 64, on the same
  weights) is the bar. GPTQ must stay within 10% of it with this tiny calibration set (it beats it
  outright with 64 x 512 tokens: see the README table); AWQ, bnb-nf4 likewise.
"""

from __future__ import annotations

import math

import pytest
import torch

import llmq
from llmq.eval.perplexity import perplexity

pytestmark = pytest.mark.slow
PPL = {"seqlen": 512, "limit": 4, "progress": False}
CALIB = {"calibration": "wikitext2", "n_samples": 16, "seqlen": 256, "group_size": 64}


@pytest.fixture(scope="module")
def baseline(smol_dir, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq.testing import rtn_fake_quantize_

    tok = AutoTokenizer.from_pretrained(smol_dir)
    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    orig = perplexity(model, tok, **PPL).value
    rtn = perplexity(rtn_fake_quantize_(model, 4, 64), tok, **PPL).value
    return {"orig": orig, "rtn4_g64": rtn}


def quantized_ppl(scheme, tmp_path, smol_quantized, **kw):
    if kw:
        qm = llmq.quantize(None, scheme, device="cpu", **kw)  # None = the demo model
        out = qm.save(tmp_path / scheme, verify=False)  # measured below by perplexity, a stronger check
        del qm
        check_size_estimate(out, scheme, kw)
    else:  # the scheme's defaults: the folder the size-estimate tests also check
        out = smol_quantized(scheme)
    # fp32 activations: bf16 matmuls are emulated (slow) on CPUs without AVX512-BF16
    model, tok = llmq.load(out, device="cpu", dtype="auto" if scheme == "bnb-int8" else torch.float32)
    value = perplexity(model, tok, **PPL).value
    print(f"{scheme}: ppl {value:.3f}")  # shown with -s / in -rA reports: the measured number behind the bound
    return value


def check_size_estimate(folder, scheme, kw):
    """The advisor's estimate against what GPTQ/AWQ really wrote for SmolLM2 (the issue's 5%; the
    other schemes are checked in tests/advisor/test_estimate.py)."""
    from llmq.advisor import estimate, params
    from llmq.models import folder_size, resolve_model

    profile = params.profile(str(resolve_model(None).local_dir()))
    est = estimate.estimate_scheme(profile, scheme, device="cpu", **kw)
    assert est.bytes == pytest.approx(folder_size(folder), rel=0.05), (scheme, folder_size(folder), est.breakdown)


def test_baseline_is_sane(baseline):
    assert 15 < baseline["orig"] < 40  # SmolLM2-135M on WikiText-2 (22.77 at seqlen 1024 x 16)
    assert baseline["rtn4_g64"] > baseline["orig"]


@pytest.mark.parametrize("scheme, bound", [("fp16", 1.01), ("int8-dynamic", 1.05), ("bnb-int8", 1.05)])
def test_16_and_8_bit(scheme, bound, baseline, tmp_path, smol_quantized):
    p = quantized_ppl(scheme, tmp_path, smol_quantized)
    assert math.isfinite(p) and p <= bound * baseline["orig"], (scheme, p, baseline)


def test_int8_static_default_calibration_stays_close(baseline, tmp_path, smol_quantized):
    """int8-static with its defaults (percentile, SmoothQuant, per-token fallback, float-activation
    lm_head) on a small calibration set: +1.7% on this slice when written (16 x 1024 with 16 x 512
    calibration: +1.32%, README "Static INT8"); without smoothing and the fallback it was +339%."""
    p = quantized_ppl("int8-static", tmp_path, smol_quantized, calibration="wikitext2", n_samples=16, seqlen=256)
    assert math.isfinite(p) and p <= 1.03 * baseline["orig"], (p, baseline)


#: AWQ on 8 windows: its scale search runs 20 forwards of each block per window (about 10 s a layer at 16
#: on a 2-core CPU); 8 windows scored 35.94 against the bound 44.87 (RTN 40.79, original 30.70) when set
@pytest.mark.parametrize("scheme, kw", [("bnb-nf4", {}), ("gptq-int4", CALIB), ("awq-int4", {**CALIB, "n_samples": 8})])
def test_4_bit_against_round_to_nearest(scheme, kw, baseline, tmp_path, smol_quantized):
    p = quantized_ppl(scheme, tmp_path, smol_quantized, **kw)
    assert math.isfinite(p) and baseline["orig"] < p <= 1.10 * baseline["rtn4_g64"], (scheme, p, baseline)
