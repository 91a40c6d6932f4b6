"""``llmq advise`` and ``llmq estimate`` from the command line."""

from __future__ import annotations

import json

import pytest

from llmq.cli.advise import parse_model
from llmq.cli import main


@pytest.mark.parametrize("text,expected", [("7B", 7_000_000_000), ("135M", 135_000_000), ("7e9", 7_000_000_000),
                                           ("70b", 70_000_000_000), ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),
                                           ("model.gguf", "model.gguf"), (None, None)])
def test_parse_model(text, expected):
    assert parse_model(text) == expected


@pytest.mark.parametrize("text", ["1e400", "0", "2e16"])
def test_parameter_counts_out_of_range_are_one_line(text, capsys):
    """``1e400`` read as inf and ended in an OverflowError traceback."""
    assert main(["advise", "--model", text]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--model {text}: a parameter count must be between 1 and 1e16" in err


def test_advise_json(capsys):
    assert main(["advise", "--model", "70B", "--device", "cuda", "--gpu-memory", "80", "--context", "8192",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["context"] == 8192 and d["hardware"]["gpu_memory_gb"] == 80
    assert d["recommended"] in ("bnb-int8", "gptq-int8", "awq-int4", "gptq-int4")
    assert d["model"]["source"] == "given"


def test_advise_table_and_markdown(capsys):
    from llmq.advisor import advice, measured

    fastest = advice.cpu_order(list(measured.CPU_SPEED["rows"]))[0]  # on CPU the measured table decides
    assert main(["advise", "--model", "7B", "--device", "cpu", "--ram", "64"]) == 0
    out = capsys.readouterr().out
    assert f"Recommended: {fastest}" in out and "int8-dynamic" in out
    assert main(["advise", "--model", "7B", "--device", "cpu", "--ram", "64", "--markdown"]) == 0
    assert f"| 1 | {fastest} | recommended |" in capsys.readouterr().out


def test_advise_bad_flag_is_one_line(capsys):
    assert main(["advise", "--model", "7B", "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmq: error: device='tpu' is invalid")


def test_estimate_json_on_a_local_folder(capsys, tiny_model_dir):
    assert main(["estimate", "--model", str(tiny_model_dir), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["scheme"]: r for r in d["rows"]}
    assert d["model"]["source"] == "headers"
    assert set(rows) >= {"fp32", "fp16", "bf16", "int8-dynamic", "bnb-int8", "bnb-nf4", "gptq-int4", "awq-int4"}
    assert rows["fp32"]["size_bytes"] == pytest.approx(2 * rows["fp16"]["size_bytes"], rel=0.01)
    assert rows["fp32"]["vs_fp32"] == 1.0
    assert {rows[s]["format"] for s in ("fp32", "fp16", "bnb-int8", "bnb-nf4", "gptq-int4")} == {
        "fp32", "fp16", "int8", "nf4", "int4"}


def test_estimate_table_for_a_parameter_count(capsys):
    assert main(["estimate", "--model", "7B", "--group-size", "64"]) == 0
    out = capsys.readouterr().out
    for s in ("fp32", "bnb-nf4", "gptq-int4", "awq-int4"):
        assert s in out
    assert "never quantized" in out


def test_markdown_table_section(capsys):
    assert main(["advise", "--markdown-table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Which scheme?")
    assert "| <100M | avoid 4-bit | 5-15% |" in out and "| 10B+ | excellent for 4-bit | 1-2% |" in out
