"""evaluate/compare end to end on the tiny model and its bnb-fp4 copy; the CLI; the report files."""

import json
import math

import pytest

import llmq
from llmq.errors import LlmqError, ModelNotFoundError
from llmq.eval import compare

FAST = {"ppl": "wikitext2", "limit": 4, "seqlen": 128, "speed": False, "progress": False}


def test_evaluate_one_model_in_memory(tiny, tmp_path):
    rep = llmq.evaluate(tiny, tasks=["arc_easy"], **FAST)
    d = rep.to_dict()
    assert set(d) == {"protocol", "model", "gate"}
    m = d["model"]
    assert math.isfinite(m["perplexity"]["value"]) and m["perplexity"]["windows"] == 4
    assert m["tasks"]["arc_easy"]["n"] == 4 and m["kld"] is None and m["load_time_s"] is None
    assert "seqlen=128" in d["protocol"]["ppl"] and "arc_easy" in d["protocol"]["tasks"]
    assert "| perplexity (lower is better) |" in rep.to_markdown()
    json.dumps(d)


def test_compare_writes_the_report_and_measures_kld(tiny_model_dir, tiny_fp4_dir, tmp_path):
    out = tmp_path / "rep"
    r = compare(str(tiny_model_dir), str(tiny_fp4_dir), tasks=["lambada"], out_dir=out,
                max_ppl_increase="50%", **{k: v for k, v in FAST.items() if k != "progress"}, progress=False)
    assert set(r) == {"protocol", "original", "quantized", "gate"}
    o, q = r["original"], r["quantized"]
    for key in ("path", "size_bytes", "param_memory_bytes", "peak_rss_bytes", "load_time_s",
                "prefill_tokens_per_s", "decode_tokens_per_s", "perplexity", "tasks", "kld"):
        assert key in o and key in q
    assert o["kld"] is None and q["kld"]["tokens"] == q["perplexity"]["tokens"] == 4 * 127
    assert 0 < q["kld"]["mean"] < 1 and 0 < q["kld"]["same_top"] <= 1 and q["kld"]["p99"] >= q["kld"]["mean"]
    assert q["size_bytes"] < o["size_bytes"] and q["param_memory_bytes"] < o["param_memory_bytes"]
    assert q["perplexity"]["value"] != o["perplexity"]["value"]
    assert r["gate"]["passed"] and r["protocol"]["ppl"] == o["perplexity"]["protocol"] == q["perplexity"]["protocol"]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(r))
    md = (out / "report.md").read_text()
    assert "KL divergence, mean" in md and "lambada acc (%)" in md and "size on disk" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_same_model_has_zero_kld(tiny_model_dir):
    r = compare(str(tiny_model_dir), str(tiny_model_dir), **FAST)
    assert r["quantized"]["kld"]["mean"] == pytest.approx(0, abs=1e-6) and r["quantized"]["kld"]["same_top"] == 1.0
    assert r["quantized"]["perplexity"]["value"] == pytest.approx(r["original"]["perplexity"]["value"], rel=1e-6)


def test_refuses_mismatched_tokenizers_and_non_models(tiny_model_dir, tmp_path):
    from llmq.testing import tiny_llama

    other = tiny_llama(tmp_path / "other", vocab_size=400)
    with pytest.raises(LlmqError, match="tokenizers differ"):
        compare(str(tiny_model_dir), str(other), **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        llmq.evaluate(str(tmp_path / "empty"), **FAST)
    with pytest.raises(LlmqError, match="Unknown task"):
        llmq.evaluate(str(tiny_model_dir), tasks=["nope"], **FAST)


def test_folders_without_weights_are_one_line_before_the_tokenizer(tiny_model_dir, tmp_path):
    """A config-only folder ended in transformers' tokenizer message; a pytorch_model.bin-only one
    was unpickled (llmq loads safetensors only)."""
    import shutil

    for name, extra in (("config-only", None), ("bin-only", "pytorch_model.bin")):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(tiny_model_dir / "config.json", d)
        if extra:
            (d / extra).write_bytes(b"not unpickled")
        with pytest.raises(ModelNotFoundError, match="no .safetensors weights") as e:
            llmq.evaluate(str(d), **FAST)
        assert (extra or "safetensors only") in str(e.value)


def test_run_eval_request_checks_data_files_before_quantizing(tmp_path):
    from llmq.errors import DataError
    from llmq.eval.api import check_eval_request
    from llmq.eval.tasks import TaskDataError

    (tmp_path / "r.txt").write_bytes(bytes(range(256)) * 80)
    with pytest.raises(DataError, match="does not look like text"):
        check_eval_request(ppl=str(tmp_path / "r.txt"))
    (tmp_path / "t.jsonl").write_text(json.dumps({"context": "a", "continuation": " b"}) + "\n"
                                      + json.dumps({"context": "a", "continuation": ""}) + "\n")
    with pytest.raises(TaskDataError, match="line 2"):
        check_eval_request(tasks=str(tmp_path / "t.jsonl"))


def test_cli_compare_gate_exit_codes(tiny_model_dir, tiny_fp4_dir, tmp_path, capsys):
    from llmq.cli import main

    base = ["compare", "--original", str(tiny_model_dir), "--quantized", str(tiny_fp4_dir), "--limit", "2",
            "--seqlen", "128", "--no-speed"]
    out = tmp_path / "fail"
    assert main(base + ["--output", str(out), "--max-kld", "1e-9"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("FAIL: mean KL divergence")
    assert json.loads((out / "report.json").read_text())["gate"]["passed"] is False  # written either way
    assert main(base + ["--output", str(tmp_path / "pass"), "--max-kld", "10", "--max-ppl-increase", "100%"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")
    assert main(base + ["--max-ppl-increase", "5x"]) == 2
    assert "max-ppl-increase" in capsys.readouterr().err


def test_run_eval_writes_the_report_into_the_quantized_folder(tiny_model_dir, tmp_path, capsys):
    from llmq.cli import main

    out = tmp_path / "q"
    code = main(["run", "--model", str(tiny_model_dir), "--scheme", "int8-dynamic", "--output", str(out),
                 "--no-sample", "--eval", "--limit", "2", "--max-ppl-increase", "50%"])
    assert code == 0, capsys.readouterr()
    r = json.loads((out / "report.json").read_text())
    assert r["gate"]["passed"] and r["original"]["path"] == str(tiny_model_dir)
    assert r["quantized"]["perplexity"]["windows"] == 2 and "seqlen=1024" in r["protocol"]["ppl"]  # clamped to max
    assert (out / "report.md").is_file() and (out / "report.png").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")


def test_compare_with_no_original_uses_the_demo_model(tiny_model_dir, tiny_fp4_dir, monkeypatch):
    """``compare(None, ...)`` means the offline demo, as ``quantize(None, ...)`` does: never a report
    without its original."""
    import llmq.models

    real = llmq.models.resolve_model
    seen = []

    class Demo:
        def local_dir(self):
            return tiny_model_dir

    monkeypatch.setattr(llmq.models, "resolve_model", lambda m, *a, **k: seen.append(m) or Demo() if m is None
                        else real(m, *a, **k))
    r = compare(None, str(tiny_fp4_dir), ppl="wikitext2", limit=1, seqlen=64, speed=False, progress=False)
    assert None in seen and r["original"]["path"] == str(tiny_model_dir) and r["quantized"]["kld"]["mean"] > 0


def test_compare_scores_a_gguf_and_a_folder_on_one_runtime(sp_gguf, tmp_path):
    """A .gguf original against a transformers folder: both on transformers (the one runtime they
    share), so the same weights give zero KL divergence, and the report names the runtime."""
    folder, f32 = sp_gguf
    r = compare(str(f32), str(folder), out_dir=tmp_path / "rep", **FAST)
    assert r["protocol"]["runtime"] == "transformers"
    assert r["original"]["runtime"] == "transformers (dequantized GGUF)" and r["quantized"]["runtime"] == "transformers"
    assert r["original"]["path"] == str(f32) and r["original"]["size_bytes"] == f32.stat().st_size
    assert r["quantized"]["kld"]["mean"] == pytest.approx(0, abs=1e-6) and r["quantized"]["kld"]["same_top"] == 1.0
    assert "- runtime: transformers" in (tmp_path / "rep" / "report.md").read_text()
    back = compare(str(folder), str(f32), **FAST)  # either order
    assert back["protocol"]["runtime"] == "transformers" and back["quantized"]["kld"]["mean"] == pytest.approx(0, abs=1e-6)


def test_compare_refuses_a_pair_with_no_shared_runtime(sp_gguf):
    """A model already loaded on llama.cpp cannot be scored on transformers: one line naming what each
    side runs on, before anything is scored."""
    from llmq.backends.gguf.runtime import LlamaCppLM
    from llmq.models import gguf_tokenizer

    folder, f32 = sp_gguf
    lm = LlamaCppLM(f32, n_ctx=128)
    try:
        with pytest.raises(LlmqError) as e:
            compare((lm, gguf_tokenizer(f32)), str(folder), **FAST)
    finally:
        lm.close()
    msg = str(e.value)
    assert "\n" not in msg and "runs on llama.cpp" in msg and "runs on transformers" in msg
