import math

import numpy as np
import pytest
import torch

from llmq.eval.kld import ReferenceCache, kld_from_probs


def test_hand_computed_kld_on_a_toy_distribution():
    # KL(p || q) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3)
    p, q = torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.25, 0.75, 0.0]])
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert kld_from_probs([0.5, 0.5, 0], [0.25, 0.75, 0]) == pytest.approx(expected)
    cache = ReferenceCache(1, 3)
    assert cache.mode == "exact"
    cache.add(0, torch.log(p + 1e-30))
    cache.compare(0, torch.log(q + 1e-30))
    r = cache.result("toy")
    cache.close()
    assert r.mean == pytest.approx(expected, rel=1e-6) and r.tokens == 1
    assert r.same_top == 0.0  # argmax p = 0 (tie broken to first), argmax q = 1


def test_identical_models_have_zero_kld_and_full_agreement():
    logits = torch.randn(2, 7, 50)
    cache = ReferenceCache(14, 50)
    for i in range(2):
        cache.add(i, logits[i])
    for i in range(2):
        cache.compare(i, logits[i])
    r = cache.result("x")
    assert r.mean == pytest.approx(0, abs=1e-7) and r.p99 == pytest.approx(0, abs=1e-7) and r.same_top == 1.0


def test_topk_is_a_tight_lower_bound_of_the_exact_kld():
    torch.manual_seed(0)
    p = torch.randn(64, 1000) * 3
    q = p + 0.3 * torch.randn(64, 1000)
    exact, top = ReferenceCache(64, 1000, mode="exact"), ReferenceCache(64, 1000, topk=32, mode="topk")
    for c in (exact, top):
        c.add(0, p)
        c.compare(0, q)
    e, t = exact.result("x"), top.result("x")
    exact.close()
    direct = torch.nn.functional.kl_div(torch.log_softmax(q, -1), torch.log_softmax(p, -1), log_target=True,
                                        reduction="none").sum(-1)
    assert e.mean == pytest.approx(direct.mean().item(), rel=1e-5)
    assert t.mean <= e.mean + 1e-9 and t.mean > 0.5 * e.mean
    assert t.same_top == e.same_top
    assert "lower bound" in t.protocol and "exact" in e.protocol


def test_p99_is_the_99th_percentile_of_per_token_values():
    cache = ReferenceCache(100, 2)
    ref = torch.zeros(100, 2)
    cache.add(0, ref)
    other = torch.zeros(100, 2)
    other[:, 0] = torch.linspace(0, 5, 100)
    cache.compare(0, other)
    per_token = [kld_from_probs([0.5, 0.5], torch.softmax(other[i], -1).tolist()) for i in range(100)]
    assert cache.result("x").p99 == pytest.approx(float(np.percentile(per_token, 99)), rel=1e-6)
    cache.close()
