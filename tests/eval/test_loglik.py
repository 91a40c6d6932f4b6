import pytest
import torch

from llmq.eval.loglik import encode_pair, loglikelihood


def test_encoding_matches_lm_eval(tiny):
    """Our tokenization of (context, continuation) pairs is lm-eval's, token for token."""
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    for ctx, cont in [("Question: what is a list?\nAnswer:", " a sequence"), ("Trailing space ", "here"),
                      ("", "no context at all"), ("Multiple  spaces  ", " x")]:
        ours = encode_pair(tok, ctx, cont)
        theirs = (lm._encode_pair(ctx, cont) if ctx else None)
        if theirs is not None:
            assert ours == tuple(theirs)
        else:
            assert ours[0] == [lm.prefix_token_id]


def test_shared_context_equals_full_sequences_and_batch_size_one(tiny, monkeypatch):
    from llmq.eval import loglik

    calls = []
    real = loglik._score_shared
    monkeypatch.setattr(loglik, "_score_shared", lambda m, docs: calls.append(len(docs)) or real(m, docs))
    model, tok = tiny
    reqs = [("Question: what does the sort method do?\nAnswer:", " " + c)
            for c in ("it sorts a list in place", "nothing", "returns a new dict of keys and values")]
    reqs += [("Another context", " with one continuation")]
    a = loglikelihood(model, tok, reqs, share_context=True, progress=False)
    b = loglikelihood(model, tok, reqs, share_context=False, batch_size=3, progress=False)
    c = loglikelihood(model, tok, reqs, share_context=False, batch_size=1, progress=False)
    assert calls == [1]  # the three choices went through the KV-cache path, the rest did not
    for x, y, z in zip(a, b, c):
        assert x.logprob == pytest.approx(z.logprob, abs=1e-4) and y.logprob == pytest.approx(z.logprob, abs=1e-4)
        assert x.greedy == y.greedy == z.greedy and x.tokens == z.tokens


def test_logprob_is_the_sum_of_next_token_log_probs(tiny):
    model, tok = tiny
    ctx, cont = encode_pair(tok, "The function returns", " a value")
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    (r,) = loglikelihood(model, tok, [("The function returns", " a value")], progress=False)
    assert r.logprob == pytest.approx(expected, abs=1e-4) and r.tokens == len(cont)


def test_sharing_only_where_it_saves_work():
    from llmq.eval.loglik import _sharing_pays

    assert _sharing_pays(25, [4, 5, 3, 6])  # arc_easy-like: long question, short answers
    assert not _sharing_pays(15, [30, 28])  # piqa-like: short goal, long solutions
    assert not _sharing_pays(100, [5])  # nothing to share
