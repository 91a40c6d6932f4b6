"""``llmq run``'s verification flags: a failed verification is exit 1 and one line naming the measure;
``--no-verify`` skips the check and the summary says so."""

from __future__ import annotations

import json

import pytest

from llmq.cli import main


def test_garbage_is_exit_1_with_one_line(peaked_dir, tmp_path, capsys, zeroing_bf16):
    out = tmp_path / "x"
    code = main(["run", "--model", str(peaked_dir), "--scheme", "bf16", "-o", str(out), "--device", "cpu",
                 "--push-to-hub", "me/x"])
    err = capsys.readouterr()
    assert code == 1 and not out.exists() and (tmp_path / "x.rejected" / "llmq.json").is_file()
    lines = [l for l in err.err.splitlines() if l.startswith("llmq:")]
    assert len(lines) == 1 and lines[0].startswith("llmq: verification failed: mean KL divergence ")
    assert "x.rejected" in lines[0] and "Pushed" not in err.out


def test_no_verify_skips_and_says_so(peaked_dir, tmp_path, capsys, zeroing_bf16):
    out = tmp_path / "y"
    assert main(["run", "--model", str(peaked_dir), "--scheme", "bf16", "-o", str(out), "--device", "cpu",
                 "--no-verify", "--no-sample"]) == 0
    assert "verification skipped (verify=False, --no-verify)" in capsys.readouterr().out
    assert json.loads((out / "llmq.json").read_text())["verification"]["skipped"] is True


def test_a_verified_run_prints_the_measure(peaked_dir, tmp_path, capsys):
    assert main(["run", "--model", str(peaked_dir), "--scheme", "bf16", "-o", str(tmp_path / "z"), "--device",
                 "cpu", "--no-sample"]) == 0
    assert "verification passed: mean KL divergence " in capsys.readouterr().out
