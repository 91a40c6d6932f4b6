"""Numbers measured in this repository that the advice quotes next to the rule of thumb.

They come from the benchmark records in ``eval/`` (each written by a script in ``scripts/``): the
functions below say which file and which fields each constant is made of. The installed package
reads them from ``llmq/advisor/measured.json`` (package data, so a non-editable install has them
too), which ``python scripts/update_measured.py`` writes from ``eval/`` after a benchmark rerun;
``tests/scripts/test_measured_json.py`` fails while the two differ. Without that file (a broken
install) every table is empty and says so under ``unavailable``: the advice then quotes no
measurement instead of failing.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

#: the file the constants are read from (generated: ``python scripts/update_measured.py``)
DATA = Path(__file__).with_name("measured.json")
#: SmolLM2-135M-Instruct's parameter count as llmq.json records it (a fact about the model, not a
#: measurement: ``tests/advisor/test_measured.py`` checks it against the demo model)
SMOL_PARAMS = 134_515_008
#: the row order of the "Measured on SmolLM2-135M" table (README "Which scheme?"): 16, 8, 4 then 3
#: bits, as the table has always had them; schemes not listed follow in the record's order
SMOL_ORDER = ("fp16", "bf16", "int8-dynamic", "int8-static", "bnb-int8", "gptq-int8", "bnb-nf4", "bnb-fp4",
              "gptq-int4", "awq-int4", "gptq-int3")
#: how ``scripts/bench_gpu.py`` names its source shapes
GPU_SHAPES = {"1b": "TinyLlama-1.1B shape", "tiny": "2-layer toy shape"}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _read(eval_dir: Path, name: str) -> dict:
    return json.loads((Path(eval_dir) / name).read_text())


def _machine_line(machine: Any) -> str:
    """A record's machine: the one-line string of older records, or ``_record.machine()``'s summary."""
    if isinstance(machine, dict):
        return machine.get("summary") or ", ".join(str(v) for v in machine.values() if v)
    return str(machine or "")


def cpu_speed(eval_dir: Path) -> dict:
    """``eval/bench_cpu_speed.json`` (``scripts/bench_cpu_speed.py``): ``llmq bench`` of each llmq
    output of the demo against fp32 transformers measured right before it in the same bench call
    (batch 1, 512-token WikiText-2 prompt, 128 new tokens, median of 2): ratios, each to its own fp32
    baseline. Each output runs as ``llmq bench`` runs it by default (``mode``): torchao folders
    compiled through ``llmq.fastpath``, GGUF on llama.cpp, the rest eager. The advisor ranks CPU
    candidates by ``decode_x``. On other CPUs the ratios differ (AMX/bf16 above all): rerun it there."""
    d = _read(eval_dir, "bench_cpu_speed.json")
    return {"command": d["command"], "model": d["model"].split(" (")[0], "machine": _machine_line(d["machine"]),
            "rows": {r["scheme"]: {"decode_x": r["decode_x"], "prefill_x": r["prefill_x"], "mode": r["mode"]}
                     for r in d["results"]}}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def smol_quality(eval_dir: Path) -> dict:
    """``eval/bench_quantize.json`` (``scripts/bench_quantize.py``): SmolLM2-135M-Instruct (the offline
    demo, fp32 dequantized from its GGUF), size written by llmq and perplexity change vs that fp32
    original for every scheme that ran (not the RTN reference row); GPTQ/AWQ at group size 64 with
    the record's calibration."""
    d = _read(eval_dir, "bench_quantize.json")
    rows = {r["scheme"]: {"size_bytes": r["size_bytes"], "ppl_change": round(r["ppl_delta_pct"] / 100, 4)}
            for r in d["rows"] if r["size_bytes"] is not None and r["time_s"] is not None}
    rank = {s: i for i, s in enumerate(SMOL_ORDER)}
    rows = dict(sorted(rows.items(), key=lambda kv: rank.get(kv[0], len(rank))))  # stable: the rest in order
    out: dict = {"command": d["command"]}
    # later `--update` runs follow the first in argv, each after a "+": the schemes they re-measured
    runs: list[list[str]] = [[]]
    for a in d.get("argv", []):
        if a == "+":
            runs.append([])
        else:
            runs[-1].append(a)
    later: list[str] = []
    for args in runs[1:]:
        if "--schemes" in args[:-1]:
            later += [s for s in args[args.index("--schemes") + 1].split(",") if s and s not in later]
    if later:
        out["refreshed"] = f"{_and(later)} by later runs with `--schemes ... --update` (argv in the JSON)"
    out["params"] = SMOL_PARAMS
    original = next((r["ppl"] for r in d["rows"] if r["scheme"].startswith("original")), None)
    m = {k: re.search(rf"{k}=(\d+)", d.get("protocol", "")) for k in ("seqlen", "windows", "scored tokens")}
    if d.get("protocol", "").startswith("wikitext2") and all(m.values()):
        protocol = (f"WikiText-2 test, seqlen {m['seqlen'][1]}, first {m['windows'][1]} windows "
                    f"({int(m['scored tokens'][1]):,} tokens), fp32 activations")
    else:
        protocol = d.get("protocol", "")
    out["protocol"] = protocol + (f"; original ppl {original:.2f}" if original is not None else "")
    out["rows"] = rows
    return out


def _stored_command(argv: list[str], stored_as: str) -> str:
    """The command line, with the interpreter by name and its output path (``--out``/``--json``) as
    the record is stored in the repository."""
    args = [Path(argv[0]).name, *argv[1:]]
    for i, a in enumerate(args[:-1]):
        if a in ("--out", "--json"):
            args[i + 1] = stored_as
    return shlex.join(args)


def gpu_speed(eval_dir: Path) -> dict:
    """``eval/gpu/bench.json`` (``python3 scripts/bench_gpu.py`` on one NVIDIA H100): ``llmq bench``
    of a random-weight Llama with TinyLlama-1.1B's shape quantized by every scheme that ran there,
    eager transformers ``generate``, 512-token prompt, 128 new tokens, ratios to bf16 at the same batch
    size (one run). At batch 1 a 1B model is bound by ``generate``'s Python overhead, not the GPU;
    quantization there buys memory, not speed. Schemes that did not finish are under ``failed``
    (their rows, if any, are the batch sizes that did)."""
    d = _read(eval_dir, "gpu/bench.json")
    argv = shlex.split(d["command"]) if "command" in d else d["argv"]
    src, env = d["source"], d["env"]
    rows: dict = {}
    for r in d["rows"]:
        rows.setdefault(r["model"], {})[str(r["batch"])] = {
            "decode_x": r["ratios"]["decode"], "prefill_x": r["ratios"]["prefill"],
            "peak_gpu_mb": None if r.get("peak_gpu_mb") is None else round(r["peak_gpu_mb"]),
            "decode_tok_s": round(r["decode_tok_s"], 1)}
    return {
        "command": _stored_command(argv, "eval/gpu/bench.json"),
        "model": f"random Llama, {GPU_SHAPES.get(src['shape'], src['shape'] + ' shape')} "
                 f"({src['params'] / 1e9:.2f}B parameters), {DTYPES.get(src['dtype'], src['dtype'])} source",
        "machine": f"{env.get('device_name') or env.get('device')}, eager transformers {env['transformers']}",
        "rows": rows,
        "failed": {e["scheme"]: (e.get("bench_error") or e.get("error") or "")[:90]
                   for e in d["schemes"] if not e["ok"]},
    }


def from_eval(eval_dir: str | Path) -> dict[str, dict]:
    """The three tables, derived from the benchmark records in ``eval_dir`` (the repository's ``eval/``)."""
    eval_dir = Path(eval_dir)
    return {"CPU_SPEED": cpu_speed(eval_dir), "SMOL_QUALITY": smol_quality(eval_dir),
            "GPU_SPEED": gpu_speed(eval_dir)}


def unavailable(why: str) -> dict[str, dict]:
    """Empty tables (the advice quotes no measurement) that say why."""
    note = f"measurements unavailable: {why}"
    # each command is the benchmark that measures the table
    return {"CPU_SPEED": {"command": "python scripts/bench_cpu_speed.py", "model": note, "machine": "no machine",
                          "rows": {}, "unavailable": why},
            "SMOL_QUALITY": {"command": "python scripts/bench_quantize.py", "params": SMOL_PARAMS, "rows": {},
                             "unavailable": why},
            "GPU_SPEED": {"command": "python3 scripts/bench_gpu.py", "model": note, "machine": "no machine",
                          "rows": {}, "failed": {}, "unavailable": why}}


def load(path: str | Path = DATA) -> dict[str, dict]:
    """The tables from ``path`` (:data:`DATA`), or :func:`unavailable` ones when it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
        return {k: data[k] for k in ("CPU_SPEED", "SMOL_QUALITY", "GPU_SPEED")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return unavailable(f"{Path(path).name} could not be read ({type(e).__name__}); "
                           "reinstall llmq or run `python scripts/update_measured.py` in its repository")


_tables = load()
#: ``eval/bench_cpu_speed.json``: see :func:`cpu_speed`
CPU_SPEED: dict = _tables["CPU_SPEED"]
#: ``eval/bench_quantize.json``: see :func:`smol_quality`
SMOL_QUALITY: dict = _tables["SMOL_QUALITY"]
#: ``eval/gpu/bench.json``: see :func:`gpu_speed`
GPU_SPEED: dict = _tables["GPU_SPEED"]
