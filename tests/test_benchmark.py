"""llmq.benchmark (``llmq.bench``, ``llmq bench``): rows, ratios and table on the tiny model; the runner
hook; errors."""

from __future__ import annotations

import pytest

from llmq import benchmark as B
from llmq.errors import ConfigError


def test_bench_tiny_in_process(tiny_model_dir):
    rows = B.bench([str(tiny_model_dir), f"{tiny_model_dir}@eager"], prompt_tokens=16, new_tokens=4,
                   batch_sizes=(1, 2), samples=1, isolate=False)
    assert [(r.batch, r.mode) for r in rows] == [(1, "eager"), (2, "eager"), (1, "eager"), (2, "eager")]
    for r in rows:
        assert r.prefill_tok_s > 0 and r.decode_tok_s > 0 and 0 < r.ttft_s < 60
        assert r.peak_rss_mb > 50 and r.load_s > 0 and r.size_mb > 0
    assert rows[0].ratios["decode"] == 1.0 and rows[1].ratios["prefill"] == 1.0
    assert rows[2].ratios["decode"] == pytest.approx(rows[2].decode_tok_s / rows[0].decode_tok_s, rel=1e-2)
    table = B.format_table(rows)
    assert table.count("\n") == 5 and "@eager" in table


def test_bench_isolated_child_process(tiny_model_dir):
    rows = B.bench([str(tiny_model_dir)], prompt_tokens=8, new_tokens=3, batch_sizes=(1,), samples=1)
    assert len(rows) == 1 and rows[0].decode_tok_s > 0 and rows[0].ratios["decode"] == 1.0


class _FakeRunner:
    """A runtime that takes exactly 0.5 s to the first token and 2.5 s in all."""

    def __init__(self, spec, *, device, threads):
        self.spec = spec

    def load(self):
        return 1.25, "fake"

    def generate(self, prompt_ids, new_tokens):
        return 0.5, 2.5


def test_runner_hook_derives_rates_from_a_registered_runtime(monkeypatch):
    monkeypatch.setattr(B, "_RUNNERS", [])
    B.register_runner(lambda spec: spec.endswith(".gguf"), _FakeRunner)
    rows = B.bench(["m.gguf"], prompt_tokens=100, new_tokens=11, batch_sizes=(1, 4), samples=2, isolate=False)
    assert rows[0].mode == "fake" and rows[0].load_s == 1.25
    assert rows[0].prefill_tok_s == pytest.approx(100 / 0.5)
    assert rows[0].decode_tok_s == pytest.approx(10 / 2.0)
    assert rows[1].prefill_tok_s == pytest.approx(4 * 100 / 0.5) and rows[1].decode_tok_s == pytest.approx(4 * 10 / 2.0)


@pytest.mark.parametrize("models, kw, msg", [
    ([], {}, "at least one model"),
    (["x@fast"], {}, "Unknown bench mode 'fast'"),
    (["x"], {"samples": 0}, "samples must be >= 1"),
    (["x"], {"new_tokens": 1}, "new_tokens >= 2"),
    (["x"], {"batch_sizes": ()}, "at least one"),  # `--batch-sizes ,` printed an empty table
    (["x"], {"batch_sizes": (0,)}, "positive integers"),
    (["x"], {"batch_sizes": (1, -8)}, "positive integers"),
])
def test_bench_errors(models, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        B.bench(models, isolate=False, **kw)


class _SmallRunner(_FakeRunner):
    """A batch-1 runtime with a 512-token context, like llama.cpp's runner on a small model."""

    max_batch = 1
    max_context = 512


def test_nothing_to_measure_or_a_prompt_past_the_context_is_an_error_not_an_empty_table(monkeypatch):
    monkeypatch.setattr(B, "_RUNNERS", [])
    B.register_runner(lambda spec: True, _SmallRunner)
    with pytest.raises(ConfigError, match="batch sizes up to 1; --batch-sizes 8 leaves nothing to measure"):
        B.bench(["m.gguf"], batch_sizes=(8,), isolate=False)
    with pytest.raises(ConfigError, match=r"\(100000 \+ 4\) exceed the model's context of 512 tokens"):
        B.bench(["m.gguf"], prompt_tokens=100000, new_tokens=4, batch_sizes=(1,), isolate=False)
    rows = B.bench(["m.gguf"], prompt_tokens=100, new_tokens=4, batch_sizes=(1, 8), samples=1, isolate=False)
    assert [r.batch for r in rows] == [1]  # 8 skipped, 1 measured: the default 1,8 still works


def test_the_torch_runner_knows_its_models_context(tiny_model_dir):
    r = B.TorchRunner(str(tiny_model_dir))
    r.load()
    assert r.max_context == 1024  # the tiny Llama's max_position_embeddings
    with pytest.raises(ConfigError, match="context of 1024"):
        B.bench([str(tiny_model_dir)], prompt_tokens=2000, new_tokens=4, batch_sizes=(1,), isolate=False)


def test_a_childs_own_error_is_the_one_line(tiny_model_dir):
    """In a child process (the default), the error is the child's one line, not its last log line."""
    with pytest.raises(ConfigError) as e:
        B.bench([str(tiny_model_dir)], prompt_tokens=2000, new_tokens=4, batch_sizes=(1,))
    assert str(e.value).startswith(f"bench {tiny_model_dir}: prompt + new tokens (2000 + 4) exceed")


def test_missing_gguf_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(B, "_RUNNERS", [])
    with pytest.raises(ConfigError, match="no such file"):
        B.bench([str(tmp_path / "model.gguf")], isolate=False)


@pytest.mark.parametrize("isolate", [True, False])
def test_missing_later_model_fails_before_any_model_runs(monkeypatch, isolate):
    """A typo in the second spec is reported before the first (real, installed) demo model loads."""
    import subprocess

    started = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: started.append(cmd))
    monkeypatch.setattr(B, "bench_one", lambda spec, **kw: started.append(spec))
    missing = "/tmp/definitely-missing-folder-xyz"
    with pytest.raises(ConfigError, match=missing) as e:
        B.bench(["demo", missing], isolate=isolate)
    assert started == [] and "\n" not in str(e.value)


@pytest.mark.parametrize("spec, error", [
    ("./nope-xyz", ConfigError), ("~/nope-xyz", ConfigError), ("../a/b", ConfigError), ("nope", ConfigError),
    ("/tmp/nope-xyz@eager", ConfigError), ("owner/name", None), ("owner/name@compile", None), ("demo", None),
])
def test_check_spec_classifies_without_network(monkeypatch, spec, error):
    """Hub ids pass on their shape alone: the check never asks the network."""
    import llmq.models as M

    monkeypatch.setattr(B, "_RUNNERS", [])
    monkeypatch.setattr(M, "_reachable", lambda *a: pytest.fail("network used"))
    if error is None:
        B._check_spec(spec)
    else:
        with pytest.raises(error, match=spec.split("@")[0].replace(".", r"\.")):
            B._check_spec(spec)


def test_check_spec_leaves_existing_paths_and_claimed_specs_alone(monkeypatch, tmp_path):
    """An existing folder (even one resolve_model would refuse: plugins recognise other layouts) is
    the loader's; a spec a registered runner matches is that runner's, placeholder or not."""
    monkeypatch.setattr(B, "_RUNNERS", [])
    B._check_spec(str(tmp_path))
    with pytest.raises(ConfigError):
        B._check_spec("placeholder")
    B.register_runner(lambda spec: spec == "placeholder", _FakeRunner)
    B._check_spec("placeholder")


def test_missing_demo_is_reported_up_front(monkeypatch):
    import llmq.models as M
    from llmq.errors import ModelNotFoundError

    def missing():
        raise ModelNotFoundError(f"The offline demo model is not installed: {M.DEMO_INSTALL}")

    monkeypatch.setattr(M, "demo_gguf_path", missing)
    monkeypatch.setattr(B, "bench_one", lambda spec, **kw: pytest.fail("a model ran"))
    with pytest.raises(ModelNotFoundError, match="demo model is not installed"):
        B.bench(["demo@eager"], isolate=False)


def test_cli_bench_missing_folder_is_one_line_exit_2():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llmq", "bench", "demo", "/tmp/nope"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "'/tmp/nope'" in r.stderr, r.stderr
    assert r.stderr.startswith("llmq: error: bench:") and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_bench_json(tiny_model_dir, capsys):
    import json

    from llmq.cli import main

    assert main(["bench", str(tiny_model_dir), "--prompt-tokens", "8", "--new-tokens", "3", "--batch-sizes", "1",
                 "--samples", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["batch"] == 1 and rows[0]["ratios"]["decode"] == 1.0
    assert main(["bench", str(tiny_model_dir), "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes must be integers" in capsys.readouterr().err


def test_timeout_keeps_the_rows_a_child_finished(monkeypatch, tmp_path):
    """A child killed at the timeout: the batch sizes it reported survive in BenchTimeout.rows. (The
    spec is a real folder: no runner claims it, so it must pass the up-front check.)"""
    import json
    import subprocess

    row = B.BenchRow("m", "eager", 1, 100.0, 10.0, 0.5, 1.0, 2.0, 300.0, peak_gpu_mb=1234.5).to_dict()
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw)
        raise subprocess.TimeoutExpired(cmd, kw["timeout"], output=b"noise\nLLMQ_BENCH_ROW " + json.dumps(row).encode())

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(B.BenchTimeout, match=r"ran past 7 s \(1 of 2 batch sizes done\)") as e:
        B.bench([str(tmp_path)], batch_sizes=(1, 8), timeout=7)
    assert seen["timeout"] == 7
    assert [(r.model, r.batch, r.peak_gpu_mb) for r in e.value.rows] == [("m", 1, 1234.5)]
    assert e.value.rows[0].ratios["decode"] == 1.0
    with pytest.raises(ConfigError, match="timeout needs isolate=True"):
        B.bench(["m"], timeout=5, isolate=False)


def test_cuda_rows_synchronize_and_report_peak_gpu_memory(monkeypatch):
    """On a CUDA device: the peak is reset before each batch size and read into its row; the
    synchronizer waits on that device. (torch.cuda is faked: CI has no GPU.)"""
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset", d)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 2_500_000_000 + 1_000_000 * len(calls))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("sync", d)))
    monkeypatch.setattr(B, "_RUNNERS", [])
    B.register_runner(lambda spec: True, _FakeRunner)
    rows = B.bench(["m"], prompt_tokens=10, new_tokens=3, batch_sizes=(1, 2), samples=1, isolate=False, device="cuda")
    assert calls == [("reset", "cuda"), ("reset", "cuda")]
    assert [r.peak_gpu_mb for r in rows] == [2501.0, 2502.0]
    assert "peak GPU MB" in B.format_table(rows) and B.format_table(rows).endswith(" 2502 |")
    B._synchronizer("cuda:0")()
    assert calls[-1] == ("sync", "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert B._gpu_peak("cuda") is None and B._gpu_peak("cpu", reset=True) is None
    assert "peak GPU MB" not in B.format_table([B.BenchRow("m", "e", 1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)])


def test_llmq_bench_is_the_public_function_even_after_the_module_is_imported():
    """``llmq.bench`` is part of the public surface; a submodule of that name would shadow it."""
    import llmq
    import llmq.benchmark

    assert llmq.bench is llmq.benchmark.bench and callable(llmq.bench)
    assert "bench" in llmq.__all__
