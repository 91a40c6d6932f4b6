"""Issue #13's probes and round two's, one test each, on tiny random models: foreign code, silent
garbage, lost output, tracebacks, evaluator generality, resource errors, interrupts. Each asserts
the exit code, a one-line error and an untouched filesystem."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmq.cli import main

ROOT = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------------
def tree_hash(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def one_line_error(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("llmq: error:")]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_cli(*args, env=None, input=None, timeout=300, cwd=None):
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "llmq", *map(str, args)], capture_output=True, text=True,
                          env=e, input=input, timeout=timeout, cwd=cwd)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(folder: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    sd = load_file(str(f))
    fn(sd)
    save_file(sd, str(f), metadata={"format": "pt"})


def debris_of(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))



#: the custom class is a subclass, not an alias: transformers registers the class it loads for its auto
#: class, and an alias would mark transformers' own LlamaForCausalLM as remote code for every later test
EVIL_CLASS = "from transformers import LlamaForCausalLM\n\n\nclass EvilForCausalLM(LlamaForCausalLM):\n    pass\n"

@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    """Broken copies of the session's tiny Llama, built once for the module."""
    import torch

    root = tmp_path_factory.mktemp("probes")
    m = {"good": tiny_model_dir}

    m["nan"] = copy_model(tiny_model_dir, root / "nan")
    edit_weights(m["nan"], lambda sd: sd["model.layers.0.mlp.down_proj.weight"].__setitem__((3, 5), float("nan")))
    m["outlier"] = copy_model(tiny_model_dir, root / "outlier")
    edit_weights(m["outlier"], lambda sd: sd["model.layers.0.mlp.up_proj.weight"].__setitem__((0, 0), 1e6))

    m["remote"] = copy_model(tiny_model_dir, root / "remote")
    cfg = json.loads((m["remote"] / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (m["remote"] / "config.json").write_text(json.dumps(cfg))
    marker = root / "EVIL_CODE_RAN"
    (m["remote"] / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        + EVIL_CLASS)
    m["remote_marker"] = marker

    for kind in ("truncated", "garbage", "empty"):
        d = copy_model(tiny_model_dir, root / kind)
        f = d / "model.safetensors"
        data = f.read_bytes()
        f.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[kind])
        m[kind] = d

    from transformers import BertConfig, BertModel

    from llmq.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=128, max_position_embeddings=128))
    m["bert"] = root / "bert"
    bert.save_pretrained(m["bert"])
    tok.save_pretrained(m["bert"])

    m["config_only"] = root / "config-only"
    m["config_only"].mkdir()
    shutil.copy(tiny_model_dir / "config.json", m["config_only"] / "config.json")

    m["random_txt"] = root / "random.txt"
    m["random_txt"].write_bytes(os.urandom(20000))
    m["ppl_txt"] = root / "ppl.txt"
    import pydoc_data.topics

    m["ppl_txt"].write_text(" ".join(list(pydoc_data.topics.topics.values())[:20]))
    m["hashes"] = {k: tree_hash(v) for k, v in m.items() if isinstance(v, Path) and v.is_dir()}
    return m


@pytest.fixture(scope="module", autouse=True)
def _sources_untouched(models):
    yield
    for k, h in models["hashes"].items():
        assert tree_hash(models[k]) == h, f"source model {k} was modified"


# == Security ===============================================================================================
def test_eval_refuses_custom_code_even_when_answered_yes(models, tmp_path):
    r = run_cli("eval", "--model", models["remote"], "--ppl", "none", "--no-speed", input="y\ny\n", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    one_line_error(r.stderr, "--trust-remote-code", "auto_map")
    assert not models["remote_marker"].exists(), "the folder's Python was imported"


def test_run_refuses_custom_code(models, tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--model", models["remote"], "--scheme", "int8-dynamic", "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "--trust-remote-code")
    assert not (tmp_path / "o").exists() and not models["remote_marker"].exists()


def test_api_load_refuses_custom_code(models):
    import llmq
    from llmq.errors import RemoteCodeError

    with pytest.raises(RemoteCodeError, match="trust-remote-code"):
        llmq.load(models["remote"], device="cpu")
    assert not models["remote_marker"].exists()


def test_trust_remote_code_is_the_only_way_in(models, tmp_path, capsys):
    """eval/compare take --trust-remote-code: with it the folder's own code runs (its marker file
    appears), without it the refusal names the flag."""
    d = copy_model(models["remote"], tmp_path / "remote")
    marker = tmp_path / "RAN"
    (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + EVIL_CLASS)
    code, _, err = cli(capsys, "compare", "--original", models["good"], "--quantized", d, "--ppl", "none",
                       "--no-speed", "-o", tmp_path / "rep")
    assert code == 2 and not marker.exists()
    one_line_error(err, "--trust-remote-code")
    code, out, err = cli(capsys, "eval", "--model", d, "--ppl", models["ppl_txt"], "--seqlen", "32", "--limit", "1",
                         "--no-speed", "--json", "--trust-remote-code")
    assert code == 0, err[-2000:]
    assert marker.exists() and json.loads(out)["model"]["perplexity"]["windows"] == 1


# == Silent garbage =========================================================================================
def test_run_int8_dynamic_refuses_nan_weight(models, tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--model", models["nan"], "--scheme", "int8-dynamic", "-o", tmp_path / "o",
                       "--no-sample")
    assert code == 2
    one_line_error(err, "NaN or Inf", "model.layers.0.mlp.down_proj.weight")
    assert not (tmp_path / "o").exists() and debris_of(tmp_path / "o") == []


def test_run_gptq_refuses_nan_weight(models, tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--model", models["nan"], "--scheme", "gptq-int4", "--calibration", "builtin",
                       "--n-samples", "4", "--seqlen", "32", "-o", tmp_path / "o", "--no-sample")
    assert code == 2
    one_line_error(err, "NaN or Inf", "model.layers.0.mlp.down_proj.weight")
    assert not (tmp_path / "o").exists()


def test_api_quantize_refuses_nan_weight(models):
    import llmq
    from llmq.errors import CorruptModelError

    with pytest.raises(CorruptModelError, match="down_proj"):
        llmq.quantize(models["nan"], "int8-dynamic", device="cpu")


@pytest.fixture(scope="module")
def gptq_outlier_run(models, tmp_path_factory):
    """One gptq-int4 run (subprocess, non-TTY) on a weight with a 1e6 outlier; two tests read it."""
    out = tmp_path_factory.mktemp("outlier") / "o"
    r = run_cli("run", "--model", models["outlier"], "--scheme", "gptq-int4", "--calibration", "builtin",
                "--n-samples", "4", "--seqlen", "32", "-o", out, "--no-sample", timeout=600)
    return r, out


def test_gptq_outlier_inf_scale_is_an_error(gptq_outlier_run):
    r, out = gptq_outlier_run
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    one_line_error(r.stderr, "NaN or Inf", "scales")
    assert not out.exists() and debris_of(out) == []


def test_eval_refuses_nan_model_instead_of_scoring(models, capsys):
    code, out, err = cli(capsys, "eval", "--model", models["nan"], "--ppl", models["ppl_txt"], "--seqlen", "32",
                         "--limit", "2", "--no-speed", "--json")
    assert code == 2, out[-2000:]
    one_line_error(err, "NaN or Inf logits")
    assert '"perplexity"' not in out  # no report: nothing was scored


def test_bert_like_config_is_refused_before_quantizing(models, tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--model", models["bert"], "--scheme", "int8-dynamic", "-o", tmp_path / "o",
                       "--no-sample")
    assert code == 2
    one_line_error(err, "would be random")
    assert not (tmp_path / "o").exists()


def test_random_bytes_calibration_file_is_refused(models, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "gptq-int4", "--calibration",
                       models["random_txt"], "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "does not look like text")


def test_unknown_skip_module_fails_and_lists_near_names(models, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "--skip-modules",
                       "down_prj", "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "'down_prj' matches no module", "down_proj")


@pytest.mark.parametrize("flag", ["--seqlen", "--stride", "--batch-size"])
def test_eval_zero_values_are_errors_not_defaults(models, capsys, flag):
    code, _, err = cli(capsys, "eval", "--model", models["good"], "--ppl", models["ppl_txt"], flag, "0", "--no-speed")
    assert code == 2
    one_line_error(err, "must be a positive integer")


# == Lost or corrupted data =================================================================================
def _no_weights(monkeypatch):
    """Fail the test (not the CLI) if anything reaches the weights."""
    from llmq.models import ModelSource

    def boom(self, *a, **k):
        raise AssertionError("weights were loaded before validation finished")

    monkeypatch.setattr(ModelSource, "local_dir", boom)


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_that_is_contains_or_is_inside_the_input_is_refused(models, tmp_path, capsys, monkeypatch, where):
    src = copy_model(models["good"], tmp_path / "models" / "src")
    before = tree_hash(tmp_path / "models")
    out = {"same": src, "inside": src / "q", "parent": tmp_path / "models"}[where]
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", src, "--scheme", "int8-dynamic", "-o", out, "--overwrite")
    assert code == 2
    one_line_error(err, "input")
    assert tree_hash(tmp_path / "models") == before


@pytest.mark.parametrize("bad", [
    ["--max-ppl-increase", "lots"],
    ["--eval", "--tasks", "no_such_task"],
    ["--push-to-hub", "not a repo id"],
    ["--eval", "--tasks", "/no/such/file.jsonl"],
], ids=["gate", "task-name", "repo-id", "task-file"])
def test_run_validates_every_flag_before_loading_weights(models, tmp_path, capsys, monkeypatch, bad):
    out = tmp_path / "prev"
    out.mkdir()
    (out / "result.txt").write_text("previous result")
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out,
                       "--overwrite", *bad)
    assert code == 2
    one_line_error(err)
    assert (out / "result.txt").read_text() == "previous result"


def test_unwritable_output_is_refused_before_loading_weights(models, capsys, monkeypatch, tmp_path):
    _no_weights(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in ("/proc/llmq-out", blocker / "sub"):
        code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out)
        assert code == 2
        one_line_error(err, "Cannot write")


def test_second_writer_fails_and_deletes_nothing(models, tmp_path, capsys, held_elsewhere):
    """A live process holds the output's lock: `run --overwrite` must fail at once and keep the folder."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "result.txt").write_text("finished result")
    (out / "llmq.json").write_text("{}")  # an earlier llmq result, which --overwrite may replace
    with held_elsewhere(out, "output_lock") as holder:
        code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out,
                           "--overwrite", "--no-sample")
        assert code == 2
        one_line_error(err, "being written by another llmq process", f"pid {holder.pid}")
        assert (out / "result.txt").read_text() == "finished result"


@pytest.mark.parametrize("scheme", ["int8-dynamic", "auto"])
def test_second_run_fails_before_loading_a_weight(models, tmp_path, monkeypatch, scheme, held_elsewhere):
    """The run pipeline (API and CLI) holds the output's lock from its checks through the save: a
    second writer of the same output fails before quantizing, for a named scheme and for auto."""
    from llmq.errors import OutputLockedError
    from llmq.pipeline.run import run

    out = tmp_path / "o"
    out.mkdir()
    (out / "result.txt").write_text("finished result")
    (out / "llmq.json").write_text("{}")
    with held_elsewhere(out, "reserve_output", overwrite=True) as holder:
        _no_weights(monkeypatch)
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            run(models["good"], scheme, output=out, overwrite=True, sample=False, max_kld=1.0)
        assert (out / "result.txt").read_text() == "finished result"


def test_auto_refuses_the_source_as_output(models, tmp_path, capsys, monkeypatch):
    src = copy_model(models["good"], tmp_path / "src")
    before = tree_hash(src)
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", src, "--scheme", "auto", "--max-kld", "1", "-o", src, "--overwrite")
    assert code == 2
    one_line_error(err, "input")
    assert tree_hash(src) == before


def test_two_api_saves_to_one_folder_one_wins_nothing_lost(models, tmp_path):
    """Two quantized models meet at a barrier, then both `save(out, overwrite=False)` at once."""
    import threading

    import llmq
    from llmq.errors import OutputExistsError

    out = tmp_path / "o"
    qms = [llmq.quantize(models["good"], "int8-dynamic", device="cpu") for _ in range(2)]
    barrier, results = threading.Barrier(2), []

    def save(qm):
        barrier.wait()
        try:
            qm.save(out, overwrite=False)
            results.append("saved")
        except OutputExistsError:
            results.append("refused")

    threads = [threading.Thread(target=save, args=(qm,)) for qm in qms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == ["refused", "saved"]
    assert json.loads((out / "llmq.json").read_text())["scheme"] == "int8-dynamic"
    assert debris_of(out) == []


def test_killed_save_leaves_debris_that_the_next_run_removes_and_reports(models, tmp_path, capsys):
    out = tmp_path / "o"
    # a writer killed with SIGKILL in the middle of writing
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from llmq.io import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -signal.SIGKILL
    assert not out.exists() and debris_of(out)  # killed: debris (and a stale lock) left behind
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".o.old-{int(dead.stdout)}").mkdir()  # a moved-aside old folder of a dead run ...
    (tmp_path / f".o.old-{int(dead.stdout)}" / "x").write_text("x")
    out.mkdir()  # ... while the previous result survived (killed while deleting the old copy)
    (out / "previous").write_text("x")
    (out / "llmq.json").write_text("{}")
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out,
                       "--no-sample", "--overwrite")
    assert code == 0, err
    assert err.count("left by a killed run") == 2 and ".incomplete" in err and ".o.old-" in err
    assert debris_of(out) == [] and (out / "llmq.json").is_file()


def test_interrupt_after_complete_save_tells_the_truth(models, tmp_path, capsys, monkeypatch):
    import llmq.cli.run as cli_run

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run, "print_summary", interrupted)
    out = tmp_path / "o"
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out,
                       "--no-sample")
    assert code == 130 and (out / "llmq.json").is_file()
    assert "nothing was written" not in err and f"{out} had been written completely" in err


def test_sigterm_during_run_leaves_no_debris(models, tmp_path):
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "llmq", "run", "--model", str(models["good"]), "--scheme",
                          "int8-dynamic", "-o", str(out), "--no-sample"],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not any(n.endswith(".incomplete") for n in debris_of(out)) and time.time() < deadline and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) in (0, 130)  # unwound like Ctrl-C (0: the save won the race)
    assert not out.exists() or (out / "llmq.json").is_file()  # complete or absent
    assert debris_of(out) == []  # no next run needed: the killed run removed its own temp folder and lock


# == Tracebacks instead of one line =========================================================================
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_is_one_line_for_run_and_eval(models, tmp_path, capsys, kind):
    code, _, err = cli(capsys, "run", "--model", models[kind], "--scheme", "int8-dynamic", "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "not a valid safetensors file")
    code, _, err = cli(capsys, "eval", "--model", models[kind], "--ppl", "none", "--no-speed")
    assert code == 2
    one_line_error(err, "not a valid safetensors file")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("scheme,setting", [("gptq-int4", "damp_percent=abc"), ("bnb-int8", "threshold=high")])
def test_set_value_of_wrong_type_is_one_line(models, tmp_path, capsys, monkeypatch, scheme, setting):
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", scheme, "--set", setting,
                       "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, setting.split("=")[0], "expected")


def test_unknown_device_is_one_line(models, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "--device", "tpu",
                       "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "'tpu'")


def test_eval_output_that_is_a_file_is_one_line(models, tmp_path, capsys):
    f = tmp_path / "report"
    f.write_text("keep")
    code, _, err = cli(capsys, "eval", "--model", models["good"], "--ppl", "none", "--no-speed", "-o", f)
    assert code == 2
    one_line_error(err, "is a file")
    assert f.read_text() == "keep"


# == Evaluator generality ===================================================================================
def test_eval_accepts_a_gguf_like_run(tmp_path, models, capsys):
    from llmq.models import demo_gguf_path

    code, out, err = cli(capsys, "eval", "--model", demo_gguf_path(), "--ppl", models["ppl_txt"], "--seqlen", "32",
                         "--limit", "1", "--no-speed", "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["perplexity"]["windows"] == 1
    from llmq.backends.gguf.plugin import llama_cpp_installed  # the rule: llama.cpp scores a .gguf when installed

    assert json.loads(out)["model"]["runtime"] == ("llama.cpp" if llama_cpp_installed()
                                                   else "transformers (dequantized GGUF)")


def test_tasks_none_is_accepted_like_ppl_none(models, capsys):
    code, out, err = cli(capsys, "eval", "--model", models["good"], "--ppl", models["ppl_txt"], "--seqlen", "32",
                         "--limit", "1", "--tasks", "none", "--no-speed", "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["tasks"] == {}


def test_task_file_with_other_field_names_can_be_mapped(models, tmp_path, capsys):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"context_options": ["The sky is", "The grass is"], "continuation": " blue",
                                       "label": 0}) for _ in range(2)))
    code, out, err = cli(capsys, "eval", "--model", models["good"], "--ppl", "none", "--tasks", f,
                         "--task-fields", "contexts=context_options,gold=label", "--no-speed", "--json")
    assert code == 0, err
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width
    assert "registered task read from" in help_text and "--task-fields" in help_text


@pytest.mark.parametrize("command", ["advise", "estimate"])
def test_advise_and_estimate_need_only_config_json(models, capsys, command):
    code, out, err = cli(capsys, command, "--model", models["config_only"], "--json")
    assert code == 0, err
    json.loads(out)


def test_eval_json_mode_prints_only_json(models, capsys):
    code, out, err = cli(capsys, "eval", "--model", models["good"], "--ppl", models["ppl_txt"], "--seqlen", "32",
                         "--limit", "1", "--no-speed", "--json")
    assert code == 0, err
    json.loads(out)


def test_gptq_progress_does_not_flood_a_non_tty_log(gptq_outlier_run):
    r, _ = gptq_outlier_run
    lines = (r.stdout + r.stderr).splitlines()
    assert len(lines) <= 20, f"{len(lines)} lines, e.g. {lines[:5]}"


def test_int8_dynamic_files_are_byte_identical_across_runs(models, tmp_path):
    import llmq

    for name in ("a", "b"):
        llmq.quantize(models["good"], "int8-dynamic", device="cpu").save(tmp_path / name)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


# == Round two: code execution and data loss ==============================================================
def _user_home(root: Path) -> Path:
    home = root / "home"
    for f, text in {".bashrc": "alias ll='ls -l'", ".ssh/id_ed25519": "secret", "Documents/thesis.tex": "chapter 1"}.items():
        (home / f).parent.mkdir(parents=True, exist_ok=True)
        (home / f).write_text(text)
    return home


def test_overwrite_never_replaces_a_folder_llmq_did_not_write(models, tmp_path, capsys, monkeypatch):
    """`run -o '~' --overwrite` replaced a home folder with model files. Now only an llmq output (or an
    empty folder) is replaced; anything else is one line and nothing is touched."""
    home = _user_home(tmp_path)
    before = tree_hash(home)
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", home, "--overwrite")
    assert code == 2
    one_line_error(err, "not an llmq output", "Nothing was touched")
    assert tree_hash(home) == before and sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    monkeypatch.undo()
    prev = tmp_path / "prev"
    assert cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", prev, "--no-sample")[0] == 0
    (prev / "notes.txt").write_text("added later")  # still an llmq output: --overwrite replaces it
    assert cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", prev, "--no-sample",
               "--overwrite")[0] == 0
    assert not (prev / "notes.txt").exists() and (prev / "llmq.json").is_file() and debris_of(prev) == []


@pytest.mark.parametrize("out", [".", "sub/..", "./"])
def test_output_naming_the_current_folder_is_refused(models, tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "llmq.json").write_text("{}")  # even a folder llmq wrote: it is where the user stands
    before = tree_hash(work)
    monkeypatch.chdir(work)
    _no_weights(monkeypatch)
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out, "--overwrite")
    assert code == 2
    one_line_error(err, "-o")
    assert tree_hash(work) == before and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_qat_resume_into_a_user_folder_and_qat_into_the_source_are_refused_before_training(models, tmp_path, capsys,
                                                                                          monkeypatch):
    """`qat --resume -o <folder with user files>` replaced it; `qat -o <inside the source>` trained and
    wrote a checkpoint into the source before refusing. Both are now one line before a weight loads."""
    home = _user_home(tmp_path)
    src = copy_model(models["good"], tmp_path / "src")
    before = tree_hash(home), tree_hash(src)
    _no_weights(monkeypatch)
    args = ["qat", "--model", src, "--scheme", "qat-w8a8", "--data", models["ppl_txt"], "--steps", "2", "--seqlen",
            "16", "--batch-size", "1"]
    code, _, err = cli(capsys, *args, "--resume", "-o", home)
    assert code == 2
    one_line_error(err, "exists and is not empty")
    code, _, err = cli(capsys, *args, "--resume", "-o", home, "--overwrite")
    assert code == 2
    one_line_error(err, "not an llmq output")
    code, _, err = cli(capsys, *args, "-o", src / "qat")
    assert code == 2
    one_line_error(err, "inside the input model folder")
    assert (tree_hash(home), tree_hash(src)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "src"]  # no checkpoint, lock or temp folder


def test_a_live_run_beside_is_never_taken_for_a_killed_ones_debris(models, tmp_path, capsys):
    """Outputs `o.v2` and `o` in one parent: the run writing `o` deleted the live temp folder of the
    run writing `o.v2` as "left by a killed run". Now cleanup matches exact names and live owners stay."""
    parent = tmp_path / "p"
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from llmq.outdir import atomic_output
        with atomic_output({str(parent / "o.v2")!r}) as tmp:
            (tmp / "llmq.json").write_text("{{}}")
            print(tmp, flush=True)
            while not Path({str(release)!r}).exists():
                time.sleep(0.05)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        live_tmp = Path(holder.stdout.readline().strip())
        assert live_tmp.is_dir() and live_tmp.name.startswith(".o.v2.")
        code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", parent / "o",
                           "--no-sample")
        assert code == 0, err
        assert "left by a killed run" not in err and (live_tmp / "llmq.json").is_file()
        release.touch()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert (parent / "o.v2" / "llmq.json").is_file() and (parent / "o" / "llmq.json").is_file()
    assert sorted(p.name for p in parent.iterdir()) == ["o", "o.v2"]


def test_gguf_beside_custom_code_is_refused_and_its_code_never_runs_or_spreads(tmp_path, capsys, monkeypatch):
    """A `.gguf` with a `tokenizer_config.json` (auto_map) and its Python beside it: transformers asked
    "run the custom code? [y/N]", a pipe answered y, and the GGUF cache kept the code for a clean copy
    of the same file elsewhere. Now: refused in one line (the answer is never asked), and with
    --trust-remote-code the file is read alone, so the code never runs and no output or cache entry holds it."""
    import io

    from llmq.testing_gguf import write_tiny_gguf

    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    clean = write_tiny_gguf(tmp_path / "clean" / "m.gguf")
    evil = tmp_path / "evil" / "m.gguf"
    evil.parent.mkdir()
    shutil.copyfile(clean, evil)
    marker = tmp_path / "EVIL_RAN"
    (evil.parent / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}))
    (evil.parent / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PreTrainedTokenizerFast\n\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))  # a pipe that says yes to every prompt
    for args in (["run", "--model", evil, "--scheme", "int8-dynamic", "-o", tmp_path / "o1"],
                 ["eval", "--model", evil, "--ppl", "none", "--no-speed"]):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line_error(err, "--trust-remote-code", "auto_map")
    code, _, err = cli(capsys, "run", "--model", evil, "--scheme", "int8-dynamic", "-o", tmp_path / "o2",
                       "--no-sample", "--trust-remote-code")
    assert code == 0, err
    code, _, err = cli(capsys, "run", "--model", clean, "--scheme", "int8-dynamic", "-o", tmp_path / "o3", "--no-sample")
    assert code == 0, err
    assert not marker.exists() and not (tmp_path / "o1").exists()
    for folder in (tmp_path / "o2", tmp_path / "o3", tmp_path / "cache"):
        assert not list(folder.rglob("*.py")) and "auto_map" not in "".join(
            f.read_text() for f in folder.rglob("*.json")), folder
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1  # one entry for the byte-identical files
# == Round two: silent wrong results, messages, resource errors ============================================
def test_config_contradicting_its_weights_is_refused_before_quantizing(models, tmp_path, capsys):
    """It quantized and saved a config.json that contradicts the tensors (exit 0)."""
    src = copy_model(models["good"], tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o"
    code, _, err = cli(capsys, "run", "--model", src, "--scheme", "int8-dynamic", "-o", out, "--no-sample")
    assert code == 2
    one_line_error(err, "config.json disagrees with the weights", "intermediate_size=512; the weights say 256")
    assert not out.exists() and debris_of(out) == []


def test_disk_full_while_saving_is_one_line_and_leaves_nothing(models, tmp_path, capsys, monkeypatch):
    import errno

    import transformers.modeling_utils as mu

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # a part written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    import safetensors.torch

    monkeypatch.setattr(mu, "safe_save_file", full_disk)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)  # the streamed writer (llmq.streaming)
    out = tmp_path / "o"
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "fp16", "-o", out, "--no-sample")
    assert code == 2
    one_line_error(err, f"No space left on the device: {out};", "-o")
    assert not out.exists() and debris_of(out) == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["long-name", "dangling-symlink", "read-only"])
def test_outputs_the_file_system_refuses_are_one_line_before_loading_weights(models, tmp_path, capsys, monkeypatch,
                                                                           case):
    _no_weights(monkeypatch)
    if case == "long-name":
        out, words = tmp_path / ("n" * 250), ("File name too long", "choose a shorter name")
    elif case == "dangling-symlink":
        out, words = tmp_path / "link", ("is a symlink to", "which does not exist")
        out.symlink_to(tmp_path / "gone" / "x")
    else:
        import errno
        import pathlib

        real_mkdir = pathlib.Path.mkdir

        def read_only(self, *a, **k):  # the writability probe llmq makes beside the output
            if self.name.startswith(".llmq-write-test"):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
        out, words = tmp_path / "o", ("Read-only file system", "choose a writable folder")
    code, _, err = cli(capsys, "run", "--model", models["good"], "--scheme", "int8-dynamic", "-o", out)
    assert code == 2
    one_line_error(err, str(out), *words)


def test_eval_data_that_is_not_what_it_claims_is_one_line(models, tmp_path, capsys):
    """Random bytes as --ppl reported a perplexity; an empty continuation was scored; a binary task
    file was a UnicodeDecodeError; a cut .gguf a reshape error."""
    code, out, err = cli(capsys, "eval", "--model", models["good"], "--ppl", models["random_txt"], "--seqlen", "32",
                         "--no-speed", "--json")
    assert code == 2 and '"perplexity"' not in out
    one_line_error(err, "random.txt does not look like text")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"context": "The answer is", "continuation": " yes"}) + "\n"
                     + json.dumps({"context": "The answer is", "continuation": ""}) + "\n")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(os.urandom(3000))
    cut = tmp_path / "cut.gguf"
    from llmq.models import demo_gguf_path

    with open(demo_gguf_path(), "rb") as f:
        cut.write_bytes(f.read(20_000_000))
    for args, words in (([models["good"], "--tasks", empty], ("empty.jsonl line 2", "non-empty text")),
                        ([models["good"], "--tasks", binary], ("binary.jsonl does not look like text",)),
                        ([cut], ("cut.gguf is not a valid GGUF file", "truncated"))):
        code, out, err = cli(capsys, "eval", "--model", *args, "--ppl", "none", "--no-speed")
        assert code == 2
        one_line_error(err, *words)
        assert "Loading weights" not in err  # refused before any model loaded


def test_folder_with_two_ggufs_is_ambiguous_not_guessed(tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "m" / name).write_bytes(b"GGUF")
    code, _, err = cli(capsys, "run", "--model", tmp_path / "m", "--scheme", "int8-dynamic", "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "holds 2 .gguf files (a.gguf, b.gguf)", "pass the one you mean")


def test_sigterm_during_gptq_ends_quietly_and_promptly(models, tmp_path):
    """The interrupt message came, then a 17-30 s wait for GPTQModel's worker threads and, at
    times, a C++ ``terminate`` with a backtrace."""
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "llmq", "run", "--model", str(models["good"]), "--scheme",
                          "gptq-int4", "--calibration", "builtin", "--n-samples", "64", "--seqlen", "256",
                          "-o", str(out), "--no-sample"],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    err = ""
    deadline = time.time() + 300
    while "layer 1/2" not in err and time.time() < deadline and p.poll() is None:
        err += p.stderr.readline()
    assert p.poll() is None, "the run ended before it could be interrupted"
    time.sleep(1)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    rest = p.communicate(timeout=120)[1]
    assert p.returncode == 130, rest[-2000:]
    assert time.time() - t0 < 5, f"took {time.time() - t0:.1f} s to exit"  # 8-9 s before, 0.8 s now
    assert "llmq: interrupted; nothing was written" in rest
    assert "terminate" not in rest and "Traceback" not in rest
    assert not out.exists() and debris_of(out) == []
