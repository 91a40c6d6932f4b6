"""How quantizing costs memory and time as models grow, measured: ``llmq run`` of each scheme on the
demo model (135M) and random Llama models of real shapes (1B, 3B, 7B: ``scripts/make_scale_models.py``)
under a cgroup memory cap (``../shared/tools/memcap``), one job at a time.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_scale.py --models /tmp/llmq-scale \\
        --sizes demo,1B,3B,7B --schemes fp16,int8-dynamic,int8-static,bnb-nf4,gguf-q8_0 --cap 12 --update

Each row: the cgroup's peak (RSS + page cache the job charged; what the cap limits), the peak
anonymous RSS of the job's processes (sampled every 0.5 s), wall time, exit status (137: killed for
memory), the output's size, and the machine's load average (the 2-core VM is shared: wall times
depend on it). Calibrated schemes calibrate on 16 x 512 WikiText-2 tokens. ``--update`` merges the
rows into ``eval/bench_scale.json``, refits the cost model (``llmq.cost``: per scheme, peak and wall
linear in the plugin's cost features, fitted on every size but the largest and checked on it) and
writes its coefficients to ``llmq/scale_costs.json``, which ``llmq run`` and ``llmq advise`` read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEMCAP = ROOT.parent / "shared" / "tools" / "memcap"
OUT_JSON = ROOT / "eval" / "bench_scale.json"
CALIB = ["--calibration", "wikitext2", "--n-samples", "16", "--seqlen", "512"]
#: bench name -> (llmq scheme, extra ``llmq run`` arguments)
SCHEMES = {
    "fp16": ("fp16", []), "bf16": ("bf16", []), "int8-dynamic": ("int8-dynamic", []),
    "int8-static": ("int8-static", CALIB), "bnb-nf4": ("bnb-nf4", []), "bnb-int8": ("bnb-int8", []),
    "gptq-int4": ("gptq-int4", CALIB), "awq-int4": ("awq-int4", CALIB),
    "gguf-q8_0": ("gguf-q8_0", []), "gguf-q4_k_m": ("gguf-q4_k_m", []),
    "gguf-q4_k_m+imatrix": ("gguf-q4_k_m", CALIB),
}


def model_dir(models: Path, size: str) -> Path:
    if size == "demo":
        from llmq.models import resolve_model

        return resolve_model(None).local_dir()
    return models / f"llama-{size.lower()}-random"


def _children(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += kids.get(q, [])
    return out


def _anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_one(cmd: list[str], cap: float) -> dict:
    """``cmd`` under memcap, sampling the anonymous RSS of its process tree."""
    full = [str(MEMCAP), str(cap), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: os.nice(10))
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], sum(_anon_kib(p) for p in _children(proc.pid)))
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    wall = time.perf_counter() - t0
    m = re.search(r"memcap: cap [\d.]+ GiB, peak ([\d.]+) GiB, wall (\d+) s, exit (\d+)", out)
    tail = "\n".join(line for line in out.splitlines()[-6:] if "memcap:" not in line)
    return {"exit": int(m.group(3)) if m else proc.returncode, "peak_cgroup_gib": float(m.group(1)) if m else None,
            "peak_anon_gib": round(peak[0] / 1024**2, 2), "wall_s": round(wall, 1),
            "error": None if m and m.group(3) == "0" else tail[-600:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="/tmp/llmq-scale", help="folder of make_scale_models.py's models")
    p.add_argument("--sizes", default="demo,1B,3B,7B")
    p.add_argument("--schemes", default="fp16,int8-dynamic,int8-static,bnb-nf4,gguf-q8_0")
    p.add_argument("--cap", type=float, default=12, help="memory cap in GiB")
    p.add_argument("--work", default="/tmp/llmq-bench-scale", help="outputs go here (deleted after measuring)")
    add_json_arg(p, OUT_JSON)
    p.add_argument("--update", action="store_true", help="merge into --json's record and refit")
    p.add_argument("--keep", action="store_true", help="keep the outputs")
    p.add_argument("--rows", help="a file of rows printed by earlier runs (JSON lines) to merge instead of measuring")
    a = p.parse_args(argv)
    from llmq.hardware import cpu_name

    models, work = Path(a.models), Path(a.work)
    os.environ["LLMQ_SCALE_MODELS"] = str(models)
    if a.rows:
        rows = [json.loads(line) for line in Path(a.rows).read_text().splitlines() if line.startswith("{")]
        update(rows, cpu_name(), Path(a.json))
        return 0
    rows = []
    for size in a.sizes.split(","):
        src = model_dir(models, size)
        for name in a.schemes.split(","):
            scheme, extra = SCHEMES[name]
            if size == "demo" and scheme.startswith(("gptq", "awq")):
                extra = extra + ["--group-size", "64"]  # 576-wide layers do not split into 128s
            out = work / f"{size}-{name}"
            cmd = [sys.executable, "-m", "llmq", "run", "--model", str(src), "--scheme", scheme, "-o", str(out),
                   "--overwrite", "--no-sample", "--no-memory-check", "--device", "cpu", *extra]
            load0 = os.getloadavg()[0]
            r = run_one(cmd, a.cap)
            from llmq.models import folder_size

            size_b = folder_size(out, ("*.safetensors", "*.gguf")) if out.is_dir() else None
            row = {"scheme": name, "size": size, "cap_gib": a.cap, **r, "output_bytes": size_b,
                   "loadavg": [round(load0, 1), round(os.getloadavg()[0], 1)],
                   "command": " ".join(["memcap", str(a.cap), "python -m llmq run --model", src.name, "--scheme",
                                        scheme, *extra, "--no-sample --device cpu"]),
                   "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not a.keep:
                shutil.rmtree(out, ignore_errors=True)
    if a.update:
        update(rows, cpu_name(), Path(a.json))
    return 0


def update(rows: list[dict], cpu: str, path: Path = OUT_JSON) -> None:
    """Merge ``rows`` (one per scheme and size, newest wins), refit, write the table and the costs."""
    from llmq import cost

    data = json.loads(path.read_text()) if path.is_file() else {}
    old = {(r["scheme"], r["size"]): r for r in data.get("rows", [])}
    old.update({(r["scheme"], r["size"]): r for r in rows})
    data.update(command=__doc__.split("\n\n")[1].strip(), cpu=cpu, rows=sorted(old.values(), key=_order))
    data["fit"] = cost.fit_rows(data["rows"], features_of)
    write_record(path, data, command=data.pop("command"))
    cost.write_coefficients(data["fit"], source=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
    print(format_table(data["rows"]))


def features_of(scheme_name: str, size: str) -> dict:
    """The plugin's cost features of ``size``'s model under the bench settings."""
    from llmq.advisor.params import profile
    from llmq.schemes import get_scheme

    scheme, extra = SCHEMES[scheme_name]
    sch = get_scheme(scheme)
    over = {"calibration": "wikitext2", "n_samples": 16, "seqlen": 512} if extra else {}
    if size == "demo" and scheme.startswith(("gptq", "awq")):
        over["group_size"] = 64
    src = model_dir(Path(os.environ.get("LLMQ_SCALE_MODELS", "/tmp/llmq-scale")), size)
    return sch.backend_cls().cost_features(profile(str(src)), sch, sch.config(**over)).as_dict()


def _order(r: dict) -> tuple:
    sizes = ["demo", "1B", "3B", "7B"]
    return (r["scheme"], sizes.index(r["size"]) if r["size"] in sizes else 9)


def format_table(rows: list[dict]) -> str:
    out = [f"{'scheme':22} {'size':5} {'exit':>4} {'cgroup GiB':>10} {'anon GiB':>8} {'wall s':>8} {'output GB':>9}"]
    for r in rows:
        ob = f"{r['output_bytes'] / 1e9:.2f}" if r.get("output_bytes") else "-"
        out.append(f"{r['scheme']:22} {r['size']:5} {r['exit']:>4} {r['peak_cgroup_gib'] or 0:>10.2f} "
                   f"{r['peak_anon_gib']:>8.2f} {r['wall_s']:>8.0f} {ob:>9}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
