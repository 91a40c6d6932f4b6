"""``llmq.pipeline.run.run``: one pipeline for a named scheme and for ``auto`` (sample and push for both)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def pushed(monkeypatch):
    """Record pushes instead of uploading (no network here); the real push is tested in test_publish."""
    import llmq.publish

    calls = []

    class Result:
        url = "https://huggingface.co/me/x"

    def fake_push(path, repo_id, private=False):
        calls.append((str(path), repo_id, private))
        return Result()

    monkeypatch.setattr(llmq.publish, "push", fake_push)
    return calls


def test_named_scheme_saves_samples_and_pushes(tiny_model_dir, tmp_path, pushed):
    from llmq.pipeline.run import run

    seen = []
    res = run(str(tiny_model_dir), "bf16", output=tmp_path / "a", device="cpu", push_to_hub="me/a",
              on_saved=lambda meta, path, sample: seen.append((meta["scheme"], path, sample)))
    assert res.code == 0 and res.scheme == "bf16" and res.path == tmp_path / "a"
    assert isinstance(res.sample, str) and "\n" not in res.sample
    assert seen == [("bf16", tmp_path / "a", res.sample)]
    assert pushed == [(str(tmp_path / "a"), "me/a", False)]


def test_auto_samples_and_pushes_its_winner(tiny_model_dir, tmp_path, pushed):
    """Before the one pipeline, ``--scheme auto`` ignored --push-to-hub and the sample."""
    from llmq.pipeline.run import run

    res = run(str(tiny_model_dir), "auto", output=tmp_path / "b", device="cpu", candidates=["bf16"],
              max_ppl_increase="1000%", limit=4, push_to_hub="me/b", private=True)
    assert res.code == 0 and res.scheme == "bf16" and res.path == tmp_path / "b"
    assert json.loads((tmp_path / "b" / "auto_report.json").read_text())["winner"] == "bf16"
    assert isinstance(res.sample, str) and res.sample
    assert pushed == [(str(tmp_path / "b"), "me/b", True)]


def test_bad_gate_is_refused_before_any_weight_loads(tiny_model_dir, tmp_path):
    from llmq.errors import ConfigError
    from llmq.pipeline.run import run

    with pytest.raises(ConfigError, match="ambiguous"):
        run(str(tiny_model_dir), "bf16", output=tmp_path / "c", device="cpu", max_ppl_increase="5")
    assert not (tmp_path / "c").exists()


def test_demo_settings_are_per_scheme():
    """The demo passed group_size=64 to every calibrated scheme, which int8-static (per channel,
    group_size -1) refused: each setting now goes only to schemes whose config has that field."""
    from llmq.pipeline.run import demo_overrides

    small = {"calibration": "builtin", "n_samples": 16, "seqlen": 256}  # a 16th of the defaults' tokens
    assert demo_overrides("int8-dynamic") == {}
    assert demo_overrides("gptq-int4") == {**small, "group_size": 64}  # 128 does not divide 576
    assert demo_overrides("awq-int4") == {**small, "group_size": 64}
    assert demo_overrides("int8-static") == small
    # its groups of 32 divide 576; offline text, 10 short steps
    assert demo_overrides("qat-int4") == {"data": "builtin", "steps": 10, "batch_size": 2, "seqlen": 128,
                                          "warmup_steps": 1}
    assert demo_overrides("gguf-q4_k_m") == {}  # an importance matrix stays optional


def test_every_scheme_passes_every_check_on_the_demo_with_its_demo_settings():
    """What `python -m llmq run --scheme S` checks before the first weight loads (options, packages,
    the demo's shapes, the calibration source), on CPU, for one scheme of every plugin (schemes of a
    plugin share their checks)."""
    from llmq.core import prepare
    from llmq.pipeline.run import demo_overrides
    from llmq.schemes import SCHEMES

    first = {}
    for name in SCHEMES:
        first.setdefault(SCHEMES.get(name).backend, name)
    first["awq"] = "awq-int4"  # AWQ shares GPTQModel's plugin but not its constraints
    for name in first.values():
        prepare(None, name, device="cpu", **demo_overrides(name))
def test_failed_verification_is_code_1_kept_aside_and_not_pushed(peaked_dir, tmp_path, pushed, zeroing_bf16):
    from llmq.pipeline.run import run

    seen = []
    res = run(str(peaked_dir), "bf16", output=tmp_path / "a", device="cpu", push_to_hub="me/a", evaluate=True,
              ppl="builtin", limit=1, on_saved=lambda *a: seen.append(a), on_report=lambda *a: seen.append(a))
    assert res.code == 1 and res.path is None and res.rejected == tmp_path / "a.rejected"
    assert not (tmp_path / "a").exists() and (res.rejected / "llmq.json").is_file()
    assert pushed == [] and seen == [] and res.sample is None and res.report is None
    assert res.verification["passed"] is False and res.meta["verification"] == res.verification
    assert res.notes[0].startswith("verification failed: mean KL divergence") and "a.rejected" in res.notes[0]


def test_no_verify_saves_and_records_that_it_was_skipped(peaked_dir, tmp_path, pushed, zeroing_bf16):
    from llmq.pipeline.run import run

    res = run(str(peaked_dir), "bf16", output=tmp_path / "b", device="cpu", verify=False, sample=False)
    assert res.code == 0 and res.path == tmp_path / "b"
    assert json.loads((tmp_path / "b" / "llmq.json").read_text())["verification"]["skipped"] is True


def test_auto_fails_a_candidate_whose_verification_fails(peaked_dir, tmp_path, zeroing_bf16):
    from llmq.pipeline.run import run

    res = run(str(peaked_dir), "auto", output=tmp_path / "c", device="cpu", candidates=["bf16"],
              max_ppl_increase="1000%", limit=1, ppl="builtin", sample=False)
    assert res.code == 1 and res.path is None
    trial = json.loads((tmp_path / "c" / "auto_report.json").read_text())["tried"][0]
    assert "verification failed" in trial["verdict"]
