import json

import pytest

from llmq.calibration import build, load_texts, validate_source
from llmq.errors import CalibrationError, UnknownNameError


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_same_seed_same_samples_different_seed_differs(tok):
    a = build("builtin", tok, n_samples=8, seqlen=64, seed=0)
    b = build("builtin", tok, n_samples=8, seqlen=64, seed=0)
    c = build("builtin", tok, n_samples=8, seqlen=64, seed=1)
    assert a.samples == b.samples and a.fingerprint["sha256"] == b.fingerprint["sha256"]
    assert a.fingerprint["sha256"] != c.fingerprint["sha256"]
    assert len(a.samples) == 8 and all(len(s) == 64 for s in a.samples)
    assert a.fingerprint["source"].startswith("builtin:")


def test_local_file_kinds(tmp_path, tok):
    text = " ".join(f"word{i}" for i in range(3000))
    (tmp_path / "c.txt").write_text(text)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": text[i:i + 500]}) for i in range(0, len(text), 500)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [text]}), tmp_path / "c.parquet")
    for name in ("c.txt", "c.jsonl", "c.parquet"):
        cal = build(str(tmp_path / name), tok, n_samples=4, seqlen=32, seed=0)
        assert len(cal.samples) == 4 and cal.fingerprint["source"] == f"file:{tmp_path / name}"


def test_list_of_strings(tok):
    cal = build(["hello world " * 200], tok, n_samples=2, seqlen=16, seed=0)
    assert cal.fingerprint["source"] == "list:1 strings"


def test_too_little_text_says_how_much(tok):
    with pytest.raises(CalibrationError, match=r"has \d+ tokens; n_samples=128 x seqlen=512 needs 65536"):
        build(["just a few words"], tok, n_samples=128, seqlen=512, seed=0)
    with pytest.raises(CalibrationError, match="empty"):
        build(["   ", ""], tok, n_samples=1, seqlen=16, seed=0)


def test_bad_sources(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        validate_source(str(tmp_path / "missing.txt"))
    with pytest.raises(UnknownNameError, match="Did you mean 'wikitext2'"):
        validate_source("wikitext3")
    with pytest.raises(CalibrationError, match="empty"):
        validate_source([])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CalibrationError, match=r"bad.jsonl:2 has no 'text' field"):
        load_texts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(CalibrationError, match="Unsupported"):
        load_texts(str(tmp_path / "x.csv"))


def test_wikitext2_uses_local_mirror_when_data_dir_set(data_dir, tok):
    texts, desc = load_texts("wikitext2")
    assert desc == f"local:{data_dir / 'wikitext2' / 'wiki.valid.tokens'}"  # the valid split: never the eval text
    assert len(texts[0]) > 1_000_000


def test_named_hub_dataset_offline_is_one_line(monkeypatch, tok):
    import llmq.models as m

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    m._REACHABLE.clear()
    from llmq.errors import LlmqError

    with pytest.raises(LlmqError, match="Cannot reach the Hugging Face Hub"):
        build("c4", tok, n_samples=1, seqlen=16, seed=0)
