"""``llmq.verify``: an output is compared with its original on fixed text; garbage fails its bound.

The tiny Llama here is built with ``initializer_range=0.1`` so its next-token distributions are
peaked (entropy ~4 of 6.2 nats): a broken output is then far from it (uniform logits: KL 0.63,
``scripts/bench_verify.py``), while the default tiny model is nearly uniform and nothing is far from it.
"""

from __future__ import annotations

import math

import pytest

import llmq
from llmq.verify import SEQLEN, WINDOWS, summary, verify, windows


def test_windows_are_fixed_offline_text(peaked_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(peaked_dir)
    a, desc = windows(tok)
    b, _ = windows(tok)
    assert a == b and len(a) == WINDOWS and all(len(w) == SEQLEN for w in a)
    assert a[0] != a[1]  # evenly spaced places of the text, not one passage twice
    assert desc.startswith("builtin:") and f"{WINDOWS} windows x {SEQLEN} tokens" in desc


def test_a_good_output_passes_with_its_numbers(peaked_dir, tmp_path):
    out = llmq.quantize(peaked_dir, "int8-dynamic", device="cpu").save(tmp_path / "i8", verify=False)
    res = verify(peaked_dir, out)  # scheme and bound from llmq.json
    assert res["passed"] and res["scheme"] == "int8-dynamic" and res["bound"] == 0.2
    assert 0 < res["kld"] < 0.01 and res["top1"] > 0.8 and res["tokens"] == WINDOWS * SEQLEN
    assert res["runtime"] == "transformers" and res["reference_runtime"] == "transformers (float32)"
    assert summary(res).startswith("verification passed: mean KL divergence ")
    # the same folder against a bound below what it measured fails: the verdict is the comparison
    assert not verify(peaked_dir, out, bound=res["kld"] / 2)["passed"]


def test_garbage_fails_far_beyond_the_bound(peaked_dir, tmp_path):
    """Zero embeddings (tied: the lm_head too) give uniform logits: the output of a model that lost its
    input, as Gemma's uninitialized embed_scale did. KL is then log(vocab) - H(original)."""
    qm = llmq.quantize(peaked_dir, "bf16", device="cpu")
    from llmq.testing import zero_embeddings

    zero_embeddings(qm.model)
    out = qm.save(tmp_path / "zero", verify=False)
    res = verify(peaked_dir, out)
    assert not res["passed"] and res["kld"] > 50 * res["bound"] and res["top1"] < 0.1
    line = summary(res)
    assert line.startswith("verification failed: mean KL divergence") and "exceeds the bf16 bound 0.01" in line


def test_non_finite_logits_fail(peaked_dir, tmp_path, monkeypatch):
    out = llmq.quantize(peaked_dir, "bf16", device="cpu").save(tmp_path / "nan", verify=False)
    from llmq.backends.base import Backend

    real = Backend.load.__func__

    def nan_load(cls, path, **kw):
        model, tok = real(cls, path, **kw)
        model.model.norm.weight.data.fill_(float("nan"))  # a NaN that only shows up in the logits
        return model, tok

    monkeypatch.setattr(Backend, "load", classmethod(nan_load))
    res = verify(peaked_dir, out)
    assert not res["passed"] and math.isinf(res["kld"]) and "non-finite" in summary(res)


def test_a_folder_without_llmq_json_needs_a_bound(peaked_dir, tmp_path):
    from llmq.errors import LlmqError

    with pytest.raises(LlmqError, match="pass scheme= or bound="):
        verify(peaked_dir, peaked_dir)
    assert verify(peaked_dir, peaked_dir, bound=1e-9)["kld"] < 1e-9  # the original against itself


def test_every_scheme_has_a_bound_far_below_garbage():
    """Bounds come from scripts/bench_verify.py: each below a third of the demo's uniform-garbage KL
    (7.68 nats) and above what the demo measured for that scheme (eval/bench_verify.json)."""
    import json
    from pathlib import Path

    from llmq.schemes import SCHEMES, get_scheme

    data = json.loads((Path(__file__).resolve().parent.parent / "eval" / "bench_verify.json").read_text())
    demo = {r["scheme"]: r for r in data["rows"] if r["model"].startswith("SmolLM2") and "kld" in r}
    garbage = demo["garbage: uniform logits"]["kld"]
    for name in SCHEMES:
        sch = get_scheme(name)
        bound = sch.backend_cls().verify_bound(sch)
        assert 0 < bound < garbage / 3, name
        if name in demo:
            assert demo[name]["kld"] * 3 <= bound, f"{name}: bound {bound} is not 3x the measured {demo[name]['kld']}"
