import math
from types import SimpleNamespace

import pytest
import torch

from llmq.errors import DataError, LlmqError
from llmq.eval.perplexity import load_text, perplexity, windows


class FixedLM(torch.nn.Module):
    """Next-token distribution that ignores the context: ``probs`` over the vocabulary."""

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.nn.Parameter(torch.log(torch.tensor(probs)), requires_grad=False)

    def forward(self, x):
        return SimpleNamespace(logits=self.logp.expand(x.shape[0], x.shape[1], -1))


class CharTok:
    """Token id = digit value: the text '0101...' tokenizes to [0, 1, 0, 1, ...]."""

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        ids = torch.tensor([[int(c) for c in text if c.isdigit()]])
        return SimpleNamespace(input_ids=ids)


def test_hand_computed_perplexity(tmp_path):
    # 2 windows of 5 tokens, 4 scored each: targets are [1,0,1,1] and [1,1,0,1] -> six 1s, two 0s.
    (tmp_path / "t.txt").write_text("01011" + "01101")
    model = FixedLM([0.25, 0.75])
    r = perplexity(model, CharTok(), str(tmp_path / "t.txt"), seqlen=5, progress=False)
    nll = -(6 * math.log(0.75) + 2 * math.log(0.25))
    assert r.tokens == 8 and r.windows == 2
    assert r.value == pytest.approx(math.exp(nll / 8), rel=1e-6)
    assert "seqlen=5, stride=5, windows=2" in r.protocol


def test_uniform_model_has_perplexity_equal_to_vocab(tmp_path):
    (tmp_path / "t.txt").write_text("0123456789" * 20)
    r = perplexity(FixedLM([0.1] * 10), CharTok(), str(tmp_path / "t.txt"), seqlen=16, progress=False)
    assert r.value == pytest.approx(10.0, rel=1e-5)


def test_windows_non_overlapping_and_strided():
    assert windows(10, 4) == [(0, 4, 3), (4, 8, 3)]  # the last 2 tokens do not fill a window
    assert windows(10, 4, limit=1) == [(0, 4, 3)]
    w = windows(10, 4, stride=2)
    # every token after the first is scored exactly once
    assert sum(k for _, _, k in w) == 9
    assert w[0] == (0, 4, 3) and w[1] == (2, 6, 2)
    with pytest.raises(LlmqError, match="stride"):
        windows(10, 4, stride=5)


def test_strided_context_lowers_perplexity_of_a_real_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import pydoc_data.topics

    (tmp_path / "doc.txt").write_text("\n".join(list(pydoc_data.topics.topics.values())[:3]))
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    a = perplexity(m, t, str(tmp_path / "doc.txt"), seqlen=64, limit=4, progress=False)
    assert math.isfinite(a.value) and a.tokens == 4 * 63


@pytest.mark.slow
def test_independent_computation_on_real_model(smol, data_dir):
    """Our protocol equals a plain loop over HF's own shifted loss (model(x, labels=x)) within 0.1%."""
    m, t = smol
    ours = perplexity(m, t, "wikitext2", seqlen=512, limit=4, progress=False)
    text = "\n\n".join((data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8").splitlines())
    ids = t(text, add_special_tokens=False, return_tensors="pt").input_ids
    losses = []
    with torch.no_grad():
        for i in range(4):
            x = ids[:, i * 512:(i + 1) * 512]
            losses.append(m(x, labels=x).loss.item())
    independent = math.exp(sum(losses) / 4)
    assert ours.value == pytest.approx(independent, rel=1e-3)


def test_sources_and_errors(tmp_path, data_dir):
    text, desc = load_text("wikitext2")
    assert "local mirror" in desc and text.startswith(" = Robert Boulter = ")
    with pytest.raises(LlmqError, match="not found"):
        load_text(str(tmp_path / "missing.txt"))
    from llmq.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'wikitext2'"):
        load_text("wikitext")
    (tmp_path / "random.txt").write_bytes(bytes(range(256)) * 80)  # calibration refused it; so does perplexity
    with pytest.raises(DataError, match="random.txt does not look like text"):
        load_text(str(tmp_path / "random.txt"))


def test_limit_beyond_the_windows_uses_what_exists_and_says_so(tmp_path):
    (tmp_path / "t.txt").write_text("0101101101")
    with pytest.warns(UserWarning, match="--limit 9 is more than the 2 windows"):
        r = perplexity(FixedLM([0.25, 0.75]), CharTok(), str(tmp_path / "t.txt"), seqlen=5, limit=9, progress=False)
    assert r.windows == 2


@pytest.mark.slow
def test_reference_number_smollm2_seqlen_1024_16_windows(smol, data_dir):
    """The team's reference: SmolLM2-135M-Instruct (fp32, dequantized) scores 22.77 on WikiText-2 test
    at seqlen 1024, first 16 windows, no BOS (measured 22.7699)."""
    model, tok = smol
    r = perplexity(model, tok, "wikitext2", seqlen=1024, limit=16, progress=False)
    assert r.tokens == 16 * 1023 and round(r.value, 2) == 22.77
