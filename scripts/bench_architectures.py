"""The architecture matrix, every family x every scheme: tiny random models built from transformers'
own configs (``llmq.testing_archs``), quantized with each scheme's smallest real settings, saved,
reloaded with ``llmq.load`` and compared with the original on a fixed 64-token text (mean KL
divergence in nats, top-1 agreement), plus the bits per weight the decoder blocks take on disk
(32 = left in fp32). Refused combinations record their one-line reason (``llmq schemes --model``).

Each family runs in its own worker process: a backend that kills the process (GPTQModel's AWQ on an
architecture it cannot handle did) costs one cell, recorded as ``crashed``, not the run.

Prints a table, writes eval/bench_architectures.json, and with ``--docs docs/architectures.md``
rewrites the table between that page's ``<!-- matrix -->`` markers (``--render``: from the JSON only;
``--update``: rerun some cells and merge them in).

    nice python scripts/bench_architectures.py --docs docs/architectures.md
    nice python scripts/bench_architectures.py --families opt --schemes int8-static --update --docs docs/architectures.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "eval" / "bench_architectures.json"


def worker(family: str, schemes: list[str], work: Path) -> None:
    """Run ``schemes`` on ``family`` in this process, one JSON line per cell on stdout."""
    import shutil

    from transformers import AutoTokenizer

    from llmq import testing_archs as A
    from llmq.errors import LlmqError

    tok = None
    if not A.FAMILIES[family].spm:
        from llmq.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(None).local_dir())
    path = A.tiny_causal_lm(family, work / family, tokenizer=tok)
    ids = A.sample_ids(AutoTokenizer.from_pretrained(path))
    ref = A.reference_logits(path, ids)
    for s in schemes:
        print(json.dumps({"family": family, "scheme": s, "status": "started"}), flush=True)
        out = work / f"{family}-{s}"
        try:
            r = A.run_cell(path, s, out, ids=ids, ref=ref)
            row = {"status": "ok", **{k: round(v, 5) for k, v in r.items()}}
        except LlmqError as e:
            row = {"status": "refused", "reason": str(e)}
        except Exception as e:  # noqa: BLE001 - recorded, the matrix goes on
            row = {"status": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps({"family": family, "scheme": s, **row}), flush=True)


def run_family(family: str, schemes: list[str], work: Path, env: dict) -> dict[str, dict]:
    """Drive a worker; restart it past a cell that killed it."""
    done: dict[str, dict] = {}
    while len(done) < len(schemes):
        todo = [s for s in schemes if s not in done]
        cmd = [sys.executable, __file__, "--worker", family, "--schemes", ",".join(todo), "--work", str(work)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        current = None
        for line in p.stdout:
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if row["status"] == "started":
                current = row["scheme"]
                continue
            done[row["scheme"]] = {k: v for k, v in row.items() if k not in ("family", "scheme")}
            current = None
            print(f"{family:8s} {row['scheme']:13s} {fmt(done[row['scheme']])}", flush=True)
        rc = p.wait()
        if current is not None or (rc and len(done) < len(schemes)):
            bad = current or todo[0]
            done[bad] = {"status": "crashed", "reason": f"the worker process died (exit {rc}) in this cell"}
            print(f"{family:8s} {bad:13s} crashed (exit {rc})", flush=True)
    return done


def fmt(r: dict) -> str:
    if r["status"] == "ok":
        return f"kl={r['kl']:.4f} top1={r['top1']:.2f} bits={r['bits']:.2f} {r['seconds']:.1f}s"
    return f"{r['status']}: {r.get('reason', '')[:150]}"


def markdown(result: dict) -> str:
    """One row per scheme, one column per family: KL / top-1, or why it is refused."""
    fams = result["families"]
    rows = ["| scheme | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    notes: dict[str, int] = {}
    for s in result["schemes"]:
        cells = []
        for f in fams:
            r = result["cells"].get(f, {}).get(s)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(f"{r['kl']:.3f} / {r['top1']:.2f}")
            else:
                n = notes.setdefault(f"{r['status']}: {short_reason(r['reason'], s)}", len(notes) + 1)
                cells.append(f"{r['status']} ({n})")
        rows.append(f"| `{s}` | " + " | ".join(cells) + " |")
    rows.append("")
    rows += [f"- ({n}) {text}" for text, n in notes.items()]
    return "\n".join(rows) + "\n"


def short_reason(reason: str, scheme: str) -> str:
    """The refusal without the scheme's name, the alternatives and the model's path (one note per kind)."""
    import re

    text = reason.split("; schemes")[0].split("; no scheme")[0]
    return re.sub(rf"^Scheme '{re.escape(scheme)}': ", "", text).replace(scheme, "the scheme")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated (default: all)")
    ap.add_argument("--schemes", help="comma-separated (default: all)")
    add_json_arg(ap, OUT)
    ap.add_argument("--update", action="store_true",
                    help="rerun only --families x --schemes and merge them into the existing --json")
    ap.add_argument("--render", action="store_true", help="only rewrite --docs from the existing --json")
    ap.add_argument("--docs", help="a markdown page whose <!-- matrix --> ... <!-- /matrix --> table to rewrite")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.schemes.split(","), Path(args.work))
        return 0

    if args.render:
        write_docs(args.docs, markdown(json.loads(Path(args.json).read_text())))
        return 0
    from llmq import testing_archs as A
    from llmq.schemes import SCHEMES

    fams = args.families.split(",") if args.families else list(A.FAMILIES)
    schemes = args.schemes.split(",") if args.schemes else list(SCHEMES)
    # GPTQModel's CPU kernel compiles its dequantization with torch.compile per shape (minutes); the
    # matrix checks what the weights compute, so it runs eager (as tests/acceptance/test_architectures.py)
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2")}
    t0 = time.perf_counter()
    cells: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="llmq-archs-") as work:
        for f in fams:
            cells[f] = run_family(f, schemes, Path(work), env)
    command = " ".join(["python scripts/bench_architectures.py", *sys.argv[1:]])
    if args.update:
        old = json.loads(Path(args.json).read_text())
        for f, rows in cells.items():
            old["cells"].setdefault(f, {}).update(rows)
        old.setdefault("updates", []).append({"command": command, "cells": {f: list(r) for f, r in cells.items()}})
        added = [s for s in schemes if s not in old["schemes"]]  # a new scheme gets its row
        old["schemes"] = old["schemes"] + added
        cells, fams, schemes = old["cells"], old["families"], old["schemes"]
    result = {
        "command": old["command"] if args.update else command,
        "models": "llmq.testing_archs.tiny_causal_lm defaults: hidden 256, intermediate 512 (GPT-2: 1024), "
                  "2 layers, 4 heads (2 KV), 512-piece SentencePiece vocabulary (GPT-2: SmolLM2's 49152), "
                  "random weights (seed 0, std 0.1), logits scaled to std 3",
        "protocol": "mean KL(original || reloaded) in nats and top-1 agreement over 64 tokens of Python's docs; "
                    "bits = 32 x decoder-block bytes on disk / fp32 decoder-block bytes; "
                    "settings: llmq.testing_archs.fast_overrides",
        "families": fams, "schemes": schemes, "cells": cells,
        "wall_s": old["wall_s"] if args.update else round(time.perf_counter() - t0, 1),
        **({"updates": old["updates"]} if args.update else {}),
    }
    write_record(args.json, result, command=result.pop("command"))
    table = markdown(result)
    print(table)
    if args.docs:
        write_docs(args.docs, table)
    return 0


def write_docs(path: str, table: str) -> None:
    page = Path(path)
    text = page.read_text()
    a, b = text.index("<!-- matrix -->"), text.index("<!-- /matrix -->")
    page.write_text(text[:a] + "<!-- matrix -->\n" + table + text[b:])


if __name__ == "__main__":
    sys.exit(main())
