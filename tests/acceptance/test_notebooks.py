"""The Colab notebooks run top to bottom on CPU with the offline demo model (their parameter cell
picks the demo and small slices when no GPU is present), and are committed without outputs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_compare_schemes.ipynb"]
COLAB = "https://colab.research.google.com/github/{org}/llmq/blob/main/notebooks/{name}"


def read(name: str):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    return nb


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_stripped_and_has_a_colab_badge(name):
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "strip outputs before commit"
    first = nb.cells[0].source
    assert "colab-badge.svg" in first and COLAB.format(org="llmq-org", name=name) in first
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "LLMQ_NOTEBOOK_MODEL" in params[0].source


def _execute(name: str, workdir: Path, monkeypatch) -> tuple[object, float]:
    from nbclient import NotebookClient

    for var in ("LLMQ_NOTEBOOK_MODEL", "LLMQ_NOTEBOOK_SCHEME", "LLMQ_NOTEBOOK_SCHEMES", "LLMQ_NOTEBOOK_LIMIT",
                "LLMQ_NOTEBOOK_REPO", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CI path: CPU, demo model, small slices
    monkeypatch.setenv("HF_HOME", str(workdir / "hf-home"))  # no stored token: the push cell stays a dry run
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = read(name)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb, time.perf_counter() - t0


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


@pytest.mark.slow
@pytest.mark.notebook
def test_quickstart_runs_on_cpu(tmp_path, monkeypatch):
    nb, seconds = _execute("01_quickstart.ipynb", tmp_path, monkeypatch)
    print(f"01_quickstart.ipynb executed in {seconds:.0f} s")
    folders = [p for p in (tmp_path / "out").iterdir() if (p / "llmq.json").is_file()]
    assert len(folders) == 1
    out = folders[0]
    meta = json.loads((out / "llmq.json").read_text())
    assert meta["source"]["kind"] == "gguf" and meta["device"] == "cpu" and meta["bits"] < 16
    report = json.loads((out / "report.json").read_text())
    assert report["quantized"]["perplexity"]["value"] > 1
    card = (out / "README.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card and "GGUF" in card and "Not measured" not in card
    text = _text(nb)
    assert "Dry run: would upload" in text and "README.md" in text


@pytest.mark.slow
@pytest.mark.notebook
def test_compare_schemes_runs_on_cpu(tmp_path, monkeypatch):
    nb, seconds = _execute("02_compare_schemes.ipynb", tmp_path, monkeypatch)
    print(f"02_compare_schemes.ipynb executed in {seconds:.0f} s")
    reports = {p.name: json.loads((p / "report.json").read_text()) for p in (tmp_path / "out").iterdir()
               if (p / "report.json").is_file()}
    assert sorted(reports) == sorted(f"SmolLM2-135M-Instruct-{s}" for s in ("fp16", "int8-dynamic", "bnb-nf4"))
    # same protocol for every scheme, so the points on the plot are comparable
    assert len({json.dumps(r["protocol"], sort_keys=True) for r in reports.values()}) == 1
    png = tmp_path / "out" / "SmolLM2-135M-Instruct-quality-vs-size.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
