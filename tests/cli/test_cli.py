import json
import subprocess
import sys

import pytest

from llmq.cli import main, build_parser
from llmq.cli.run import overrides_from_args, parse_value


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llmq", *args], capture_output=True, text=True, cwd=cwd)


def test_schemes_json_lists_every_scheme_with_capabilities(capsys):
    assert main(["schemes", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["awq-int4"]["calibration"] is True and rows["fp16"]["calibration"] is False
    assert rows["gptq-int4"]["extra"] == "gptq" and rows["bnb-nf4"]["extra"] == "bnb"
    assert all(r["installed"] for r in rows.values())  # the test environment installs llmq[all]


def test_unknown_scheme_is_one_line_with_suggestion():
    r = run_cli("run", "--model", "x/y", "--scheme", "awq-int5", "-o", "/tmp/never")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "Unknown scheme 'awq-int5'. Did you mean 'awq-int4'?" in r.stderr
    assert "Traceback" not in r.stderr


def test_existing_output_refused_and_untouched(tmp_path, tiny_model_dir):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious").write_text("x")
    code = main(["run", "--model", str(tiny_model_dir), "--scheme", "fp16", "-o", str(out)])
    assert code == 2 and (out / "precious").read_text() == "x"


def test_missing_model_and_bad_group_size(tmp_path, tiny_model_dir, capsys):
    assert main(["run", "--model", str(tmp_path / "nope"), "--scheme", "fp16", "-o", str(tmp_path / "a")]) == 2
    assert "not a local folder" in capsys.readouterr().err
    assert main(["run", "--model", str(tiny_model_dir), "--scheme", "gptq-int4", "--group-size", "48",
                 "-o", str(tmp_path / "b")]) == 2
    assert "group_size=48 is invalid" in capsys.readouterr().err
    assert main(["run", "--model", str(tiny_model_dir), "--scheme", "gptq-int4", "--calibration",
                 str(tmp_path / "missing.txt"), "-o", str(tmp_path / "c")]) == 2
    assert "Calibration file not found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_scheme_required_with_model(tiny_model_dir, capsys, tmp_path):
    assert main(["run", "--model", str(tiny_model_dir), "-o", str(tmp_path / "x")]) == 2
    assert "--scheme is required" in capsys.readouterr().err


def test_run_end_to_end_on_tiny_model(tmp_path, tiny_model_dir):
    out = tmp_path / "tiny-i8"
    r = run_cli("run", "--model", str(tiny_model_dir), "--scheme", "int8-dynamic", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "int8-dynamic" in r.stdout and "sample:" in r.stdout and "x" in r.stdout  # summary table + sample line
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["scheme"] == "int8-dynamic" and meta["source"]["kind"] == "local"


def test_overrides_from_args_parses_set_and_skip_modules():
    args = build_parser().parse_args([
        "run", "--scheme", "gptq-int4", "--bits", "8", "--asym", "--skip-modules", "down_proj, o_proj",
        "--set", "damp_percent=0.1", "--set", "desc-act=true",
    ])
    ov = overrides_from_args(args)
    assert ov == {"bits": 8, "sym": False, "skip_modules": ("down_proj", "o_proj"), "damp_percent": 0.1, "desc_act": True}
    assert parse_value("[1,2]") == [1, 2] and parse_value("abc") == "abc"
    with pytest.raises(Exception, match="KEY=VALUE"):
        overrides_from_args(build_parser().parse_args(["run", "--set", "novalue"]))


def test_resource_errors_from_any_command_are_one_line_other_oserrors_are_not(monkeypatch, capsys):
    """Disk full, read-only, name too long, permission: translated once, in ``main``, whatever
    command raised them (here wrapped by a library, as safetensors and torch do)."""
    import errno

    import llmq.cli.schemes as schemes_cli

    def full(args):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")
        except OSError as e:
            raise RuntimeError("serializing failed") from e

    monkeypatch.setattr(schemes_cli, "cmd_schemes", full)
    assert main(["schemes"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("llmq: error: No space left on the device: /data/out/model")
    monkeypatch.setattr(schemes_cli, "cmd_schemes", lambda args: open("/definitely/missing/file"))
    with pytest.raises(FileNotFoundError):  # not a resource problem: a bug, shown as one
        main(["schemes"])


def test_an_interrupted_run_exits_at_once_despite_busy_worker_threads(tmp_path):
    """GPTQModel leaves worker threads computing after Ctrl-C/SIGTERM; the interpreter's exit joined
    them (17 s on the demo) and could abort in C++ (``terminate called``). ``entry`` runs the atexit
    callbacks (temporary folders) and ends the process."""
    import textwrap
    import time

    marker = tmp_path / "atexit-ran"
    code = textwrap.dedent(f"""
        import atexit, threading, time
        import llmq.cli as cli
        threading.Thread(target=time.sleep, args=(60,)).start()  # a non-daemon worker, busy for a minute
        atexit.register(lambda: open({str(marker)!r}, "w").write("x"))
        cli.main = lambda argv=None: 130
        cli.entry()
    """)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr[-2000:]
    assert time.perf_counter() - t < 30 and marker.exists()
    assert "terminate" not in r.stderr and "Traceback" not in r.stderr
def _gpt2(path, weights=False):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=128, bos_token_id=0, eos_token_id=0)
    cfg.architectures = ["GPT2LMHeadModel"]
    if weights:
        GPT2LMHeadModel(cfg).save_pretrained(path)
    else:
        cfg.save_pretrained(path)
    return path


def test_schemes_model_says_per_scheme_whether_it_works_from_the_config_alone(tmp_path, capsys):
    """GPT-2 keeps its weights in Conv1D layers: the Linear-only schemes say so; casts, bitsandbytes
    (which transposes Conv1D) and llama.cpp's converter take it. Only config.json is in the folder."""
    assert main(["schemes", "--model", str(_gpt2(tmp_path / "g")), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    works = {n for n, r in rows.items() if r["works"]}
    assert works == {"fp16", "bf16", "bnb-int8", "bnb-nf4", "bnb-fp4", "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m",
                     "gguf-q4_k_m", "gguf-q4_0"}
    assert rows["fp16"]["why_not"] is None
    assert "GPT2LMHeadModel's Conv1D layers" in rows["int8-dynamic"]["why_not"]
    assert main(["schemes", "--model", str(tmp_path / "g")]) == 0
    assert "works for this model?" in capsys.readouterr().out


def test_a_scheme_that_cannot_quantize_the_model_is_one_line_naming_what_can(tmp_path, capsys):
    model = _gpt2(tmp_path / "g", weights=True)
    capsys.readouterr()
    code = main(["run", "--model", str(model), "--scheme", "int8-dynamic", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "int8-dynamic cannot quantize GPT2LMHeadModel's Conv1D layers" in err
    assert "schemes at its precision that can: bnb-int8, gguf-q8_0, gguf-q6_k" in err
    assert not (tmp_path / "o").exists()
