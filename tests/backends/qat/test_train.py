"""QAT checkpoints: data only (safetensors + JSON, never a pickle), and tied to the model, settings
and data that wrote them. Tiny random Llamas; each training run is a few steps."""

from __future__ import annotations

import json
import pickle

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from llmq.backends.qat import train as QT  # noqa: E402
from llmq.errors import ConfigError, LlmqError  # noqa: E402
from llmq.pipeline.qat import qat_config  # noqa: E402


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two random Llamas of the same shape and tokenizer, different weights."""
    from llmq.testing import tiny_llama

    root = tmp_path_factory.mktemp("qat-ck")
    return tiny_llama(root / "a", layers=1, seed=1), tiny_llama(root / "b", layers=1, seed=2)


@pytest.fixture(scope="module")
def texts():
    import pydoc_data.topics

    return list(pydoc_data.topics.topics.values())


def _cfg(texts, **kw):
    args = dict(data=texts, steps=4, lr=1e-3, seed=3, checkpoint_every=2, seqlen=32, batch_size=2, warmup_steps=1,
                eval_windows=2, objective="lm")
    args.update(kw)
    return qat_config("qat-8da4w", **args)


def _interrupted(model_dir, cfg, ckdir, ctrl_c_at_step):
    """Train until step 3 is interrupted: the checkpoint holds step 2."""
    with ctrl_c_at_step(3), pytest.raises(LlmqError, match="interrupted at step 2"):
        QT.train_model(model_dir, cfg, "cpu", checkpoint_dir=ckdir, progress=False, convert=False)


class _Planted:
    """A pickle that runs code when loaded: what a planted ``qat_state.pt`` could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_is_safetensors_and_json_and_resume_never_unpickles(twins, texts, tmp_path, monkeypatch,
                                                                       ctrl_c_at_step):
    a, _ = twins
    ck = tmp_path / "ck"
    cfg = _cfg(texts)
    _interrupted(a, cfg, ck, ctrl_c_at_step)
    assert sorted(p.name for p in ck.iterdir()) == sorted([QT.CKPT_META, QT.CKPT_MODEL, QT.CKPT_STATE])
    record = json.loads((ck / QT.CKPT_META).read_text())
    assert record["step"] == 2 and record["format"] == QT.CKPT_FORMAT
    assert record["model"]["name"] == str(a) and len(record["model"]["weights_sha256"]) == 64

    def no_unpickling(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    _, t = QT.train_model(a, cfg, "cpu", checkpoint_dir=ck, resume=True, progress=False, convert=False)
    assert t["resumed_from_step"] == 2 and t["steps_done"] == 4


def test_a_planted_pickle_is_refused_without_being_loaded(twins, texts, tmp_path):
    a, _ = twins
    ck = tmp_path / "ck"
    ck.mkdir()
    marker = tmp_path / "PLANTED_CODE_RAN"
    with open(ck / QT.LEGACY_CKPT, "wb") as f:
        pickle.dump({"step": 1, "model": _Planted(marker)}, f)
    with pytest.raises(ConfigError, match="pickle from an older llmq.*unpickling can run code") as e:
        QT.train_model(a, _cfg(texts), "cpu", checkpoint_dir=ck, resume=True, progress=False, convert=False)
    assert "\n" not in str(e.value) and not marker.exists()


def test_resume_refuses_another_model_of_the_same_shape_other_settings_and_other_data(twins, texts, tmp_path,
                                                                                      monkeypatch, ctrl_c_at_step):
    """Before: a resume with model B continued A's training and labelled the result B. Now each
    mismatch is one line, raised before a weight loads."""
    import transformers

    a, b = twins
    ck = tmp_path / "ck"
    cfg = _cfg(texts)
    _interrupted(a, cfg, ck, ctrl_c_at_step)

    def boom(*a, **k):
        raise AssertionError("weights loaded before the checkpoint was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    cases = [(b, cfg, "trained from another model"),
             (a, _cfg(texts, lr=2e-3), r"other settings \(lr differ\)"),
             (a, _cfg(list(reversed(texts))), "trained on other data")]
    for model_dir, c, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            QT.train_model(model_dir, c, "cpu", checkpoint_dir=ck, resume=True, progress=False, convert=False)
        assert "\n" not in str(e.value)
    with pytest.raises(LlmqError, match="no QAT checkpoint"):
        QT.train_model(a, cfg, "cpu", checkpoint_dir=tmp_path / "none", resume=True, progress=False)


def test_checkpoint_encoding_round_trips_optimizer_state_exactly():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    tensors: dict = {}
    enc = QT._encode(opt.state_dict(), "optimizer", tensors)
    json.dumps(enc)  # JSON only; tensors go to safetensors
    dec = QT._decode(json.loads(json.dumps(enc)), tensors)
    sd = opt.state_dict()
    assert dec["param_groups"] == sd["param_groups"] and isinstance(dec["param_groups"][0]["betas"], tuple)
    for k, st in sd["state"].items():
        for name, t in st.items():
            assert torch.equal(dec["state"][k][name], t)
    with pytest.raises(TypeError, match="cannot store"):
        QT._encode({"x": object()}, "o", {})
