"""How quantizing costs memory and time as models grow, measured: ``llmq run`` of each scheme on the
demo model (135M) and random Llama models of real shapes (1B, 3B, 7B: ``scripts/make_scale_models.py``)
under a cgroup memory cap (``../shared/tools/memcap``), one job at a time.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_scale.py --models /tmp/llmq-scale --cap 12 \\
        --timeout awq-int4=1800 --evaluate 7B --update

(every CPU scheme at every size: about 5 hours on a 2-core VM, GPTQ's 7B run 69 minutes of it).

Each row: the cgroup's peak (RSS + page cache the job charged; what the cap limits), the peak
anonymous RSS of the job's processes (sampled every 0.5 s), wall time, exit status (137: killed for
memory), when the peak came and what the job had printed last by then (the phase that held it;
``--trace DIR`` keeps every sample), the output's size, and the machine's load average (the 2-core VM is shared: wall times
depend on it). Calibrated schemes calibrate on 16 x 512 WikiText-2 tokens. Runs are ``--no-verify``:
the rows measure quantizing, what the cost model projects (verification loads the original only when
it fits in 70% of the available RAM, ``llmq.core``, so it never raises a run past the machine).
``--update`` merges the
rows into ``eval/bench_scale.json``, refits the cost model (``llmq.cost``: per scheme, peak and wall
linear in the plugin's cost features, fitted on every size but the largest and checked on it) and
writes its coefficients to ``llmq/scale_costs.json``, which ``llmq run`` and ``llmq advise`` read.

``--evaluate 7B`` then evaluates that size's outputs under ``--eval-cap`` (20 GiB): ``llmq compare``
of the original against its int8-static output (2 x 512 WikiText-2 perplexity tokens, ARC-Easy's
first 20 rows, KL divergence) and one ``llmq bench`` of the original, int8-static and gguf-q8_0
(prefill/decode, batch 1, eager: random weights, so speed and memory only). Those rows go to the
record's ``eval_rows``.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

from llmq.cost import SIZES  # noqa: E402

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
    # whole-model jobs, refused by their plugin's formula when they cannot fit (measured to check it)
    "fp8": ("fp8", []), "int8-dynamic+ct": ("int8-dynamic", ["--format", "compressed-tensors"]),
}


#: the README's table: every CPU scheme (``--timeout awq-int4=1800`` projects AWQ past its first layers)
TABLE_SCHEMES = ("fp16", "int8-dynamic", "int8-static", "bnb-nf4", "gguf-q8_0", "bnb-int8", "gptq-int4",
                 "awq-int4", "gguf-q4_k_m+imatrix")


def timeouts(text: str) -> dict[str, float]:
    """``--timeout``: ``"1800"`` (every run) or ``"awq-int4=1800,600"`` (AWQ 1800 s, the rest 600 s)."""
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, sec = item.rpartition("=")
        if name and name not in SCHEMES:
            raise argparse.ArgumentTypeError(f"unknown scheme {name!r} (one of {', '.join(SCHEMES)})")
        try:
            out[name or "*"] = float(sec)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {sec!r}") from None
    return out


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


LAYER_LINE = re.compile(r"llmq: [\w.+-]+: layer (\d+)/(\d+)")


def layer_times(stamped: list[tuple[float, str]]) -> dict | None:
    """From GPTQ/AWQ's ``llmq: <scheme>: layer i/N`` lines (printed as layer i starts) and their
    times: layers finished, seconds per layer (median), and the projected total (time to layer 1
    plus N layers at that rate)."""
    starts = [(t, int(m.group(1)), int(m.group(2))) for t, line in stamped if (m := LAYER_LINE.search(line))]
    if len(starts) < 2:
        return {"layers_started": len(starts), "of": starts[0][2]} if starts else None
    per = sorted(b[0] - a[0] for a, b in zip(starts, starts[1:]))
    med = per[len(per) // 2]
    return {"layers_started": len(starts), "of": starts[0][2], "to_layer_1_s": round(starts[0][0], 1),
            "per_layer_s": [round(x, 1) for x in per], "median_per_layer_s": round(med, 1),
            "projected_total_s": round(starts[0][0] + starts[0][2] * med)}


def iter_pieces(stream: Any):
    """``stream``'s text as it arrives, cut after every newline and carriage return."""
    import codecs

    dec, buf = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    while chunk := stream.read1(65536):
        buf += dec.decode(chunk)
        *done, buf = re.split(r"(?<=[\r\n])", buf)
        yield from (d for d in done if d)
    if buf + dec.decode(b"", final=True):
        yield buf


def phase_at(stamped: list[tuple[float, str]], t: float) -> str:
    """What the job printed last before ``t`` (a progress bar's latest update counts): which phase
    held the peak."""
    before = [line for s, line in stamped if s <= t and line.strip()]
    return before[-1].strip()[:160] if before else ""


def run_one(cmd: list[str], cap: float, keep_output: bool = False, timeout: float | None = None,
            trace: Path | None = None) -> dict:
    """``cmd`` under memcap, sampling the anonymous RSS of its process tree; stopped (SIGTERM: llmq
    ends quietly and removes its temporary folder) after ``timeout`` seconds. ``trace``: a JSON file
    for the memory timeline (every sample) beside what the job printed, stamped."""
    import signal

    full = [str(MEMCAP), str(cap), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    stamped: list[tuple[float, str]] = []  # pieces ending in "\n" or "\r" (a progress bar's updates), stamped

    def read() -> None:
        for piece in iter_pieces(proc.stdout):
            stamped.append((time.perf_counter() - t0, piece))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = [0, 0.0]  # KiB, seconds since start
    samples: list[tuple[float, int]] = []

    def sample() -> None:
        while proc.poll() is None:
            now, t = sum(_anon_kib(p) for p in _children(proc.pid)), time.perf_counter() - t0
            samples.append((round(t, 1), now))
            if now > peak[0]:
                peak[:] = [now, t]
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join()
    th.join()
    wall = time.perf_counter() - t0
    out = "".join(line for _, line in stamped)
    m = re.search(r"memcap: cap [\d.]+ GiB, peak ([\d.]+) GiB, wall (\d+) s, exit (\d+)", out)
    tail = "\n".join(line for line in out.splitlines()[-6:] if "memcap:" not in line)
    row = {"exit": int(m.group(3)) if m else proc.returncode, "peak_cgroup_gib": float(m.group(1)) if m else None,
           "peak_anon_gib": round(peak[0] / 1024**2, 2), "wall_s": round(wall, 1),
           "error": None if m and m.group(3) == "0" else tail[-600:]}
    if timed_out:
        row.update(exit="timeout", error=f"stopped after {timeout:.0f} s (--timeout)")
    if peak[0]:
        row.update(peak_at_s=round(peak[1], 1), peak_during=phase_at(stamped, peak[1]))
    layers = layer_times(stamped)
    if layers:
        row["layers"] = layers
    if trace:
        write_record(trace, {"anon_kib": samples, "printed": [(round(t, 1), x) for t, x in stamped]},
                     command=full, quiet=True)
    return {**row, "output": out} if keep_output else row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="/tmp/llmq-scale", help="folder of make_scale_models.py's models")
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--schemes", default=",".join(TABLE_SCHEMES))
    p.add_argument("--cap", type=float, default=12, help="memory cap in GiB")
    p.add_argument("--work", default="/tmp/llmq-bench-scale", help="outputs go here (deleted after measuring)")
    add_json_arg(p, OUT_JSON)
    p.add_argument("--update", action="store_true", help="merge into --json's record and refit")
    p.add_argument("--keep", action="store_true", help="keep the outputs")
    p.add_argument("--trace", metavar="DIR", help="write each run's memory timeline and printed lines to DIR")
    p.add_argument("--rows", help="a file of rows printed by earlier runs (JSON lines) to merge instead of measuring")
    p.add_argument("--evaluate", metavar="SIZE", help="then compare and bench SIZE's int8-static/gguf-q8_0 outputs")
    p.add_argument("--eval-cap", type=float, default=20, help="memory cap of --evaluate's commands in GiB")
    p.add_argument("--timeout", type=timeouts, default={},
                   help="stop a run after this many seconds: SECONDS for every run and/or SCHEME=SECONDS, "
                        "comma-separated (GPTQ/AWQ rows then project the total from the layers done)")
    a = p.parse_args(argv)
    if a.trace:  # before the first run, not after an hour of it
        try:
            Path(a.trace).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            p.error(f"--trace: cannot make the folder {a.trace}: {e.strerror}")
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
            scheme, extra = run_args(name, size)
            out = work / f"{size}-{name}"
            cmd = [sys.executable, "-m", "llmq", "run", "--model", str(src), "--scheme", scheme, "-o", str(out),
                   "--overwrite", "--no-sample", "--no-verify", "--no-memory-check", "--device", "cpu", *extra]
            load0 = os.getloadavg()[0]
            r = run_one(cmd, a.cap, timeout=a.timeout.get(name, a.timeout.get("*")),
                        trace=Path(a.trace) / f"{size}-{name}.json" if a.trace else None)
            from llmq.models import folder_size

            size_b = folder_size(out, ("*.safetensors", "*.gguf")) if out.is_dir() else None
            row = {"scheme": name, "size": size, "cap_gib": a.cap, **r, "output_bytes": size_b, "cpu": cpu_name(),
                   **({"env": env} if (env := run_env()) else {}),
                   "formula_gib": whole_model_formula(name, size),
                   "loadavg": [round(load0, 1), round(os.getloadavg()[0], 1)],
                   "command": " ".join(["memcap", str(a.cap), "python -m llmq run --model", src.name, "--scheme",
                                        scheme, *extra, "--no-sample --no-verify --device cpu"]),
                   "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not a.keep and not (size == a.evaluate and name in EVAL_SCHEMES):
                shutil.rmtree(out, ignore_errors=True)
    eval_rows = evaluate(models, work, a.evaluate, a.eval_cap) if a.evaluate else []
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    if a.update:
        update(rows, cpu_name(), Path(a.json), eval_rows)
    return 0


EVAL_SCHEMES = ("int8-static", "gguf-q8_0")


def _eval_inputs(src: Path, work: Path) -> tuple[Path, Path]:
    """A text of 2 x 512 tokens of WikiText-2's test split and ARC-Easy's first 20 rows, in ``work``."""
    from transformers import AutoTokenizer

    from llmq.data import local_file

    tok = AutoTokenizer.from_pretrained(src)
    raw = local_file("wikitext2", "wiki.test.raw").read_text(encoding="utf-8")
    n = 4000
    while len(tok(raw[:n])["input_ids"]) < 1024 + 64:  # 2 full windows, a little to spare
        n += 500
    text, task = work / "wikitext2-2x512.txt", work / "arc_easy-20.jsonl"
    text.write_text(raw[:n], encoding="utf-8")
    rows = local_file("tasks", "arc_easy_test.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    task.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return text, task


def evaluate(models: Path, work: Path, size: str, cap: float) -> list[dict]:
    """``llmq compare`` (original vs int8-static) and ``llmq bench`` (original, int8-static,
    gguf-q8_0) of ``size``'s outputs, each under ``memcap cap``."""
    src = model_dir(models, size)
    outs = {n: work / f"{size}-{n}" for n in EVAL_SCHEMES}
    gguf = next(outs["gguf-q8_0"].glob("*.gguf"), None)
    text, task = _eval_inputs(src, work)
    cmds = {
        "compare": [sys.executable, "-m", "llmq", "compare", "--original", str(src), "--quantized",
                    str(outs["int8-static"]), "-o", str(work / "compare"), "--ppl", str(text), "--seqlen", "512",
                    "--tasks", f"arc_easy={task}", "--device", "cpu", "--no-speed", "--json"],
        "bench": [sys.executable, "-m", "llmq", "bench", f"{src}@eager", f"{outs['int8-static']}@eager", str(gguf),
                  "--prompt-tokens", "128", "--new-tokens", "16", "--batch-sizes", "1", "--samples", "1",
                  "--device", "cpu", "--json"],
    }
    rows = []
    for kind, cmd in cmds.items():
        r = run_one(cmd, cap, keep_output=True)
        out = r.pop("output")
        result = _last_json(out)
        if result is None:
            r["output_tail"] = out[-4000:]
        row = {"kind": kind, "size": size, "cap_gib": cap, **r, "result": result,
               "command": " ".join(["memcap", str(cap), "python -m llmq", *[_short(x, work, models) for x in cmd[3:]]]),
               "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _short(arg: str, *roots: Path) -> str:
    for r in roots:
        arg = arg.replace(str(r) + "/", "")
    return arg


def _last_json(out: str) -> object:
    """The JSON document the command printed (its stdout; notes and memcap's line are around it):
    the first that parses from the start of a line."""
    pos = 0
    for line in out.splitlines(keepends=True):
        if line.startswith(("{", "[")):
            try:
                return json.JSONDecoder().raw_decode(out[pos:])[0]
            except ValueError:
                pass
        pos += len(line)
    return None


def update(rows: list[dict], cpu: str, path: Path = OUT_JSON, eval_rows: list[dict] | None = None) -> None:
    """Merge ``rows`` (one per scheme, size, memory settings and CPU; newest wins), refit, write the
    table and the costs. A row without ``cpu`` was measured here (``cpu``, new rows) or, in the file,
    on the CPU the file named before rows named their own."""
    from llmq import cost

    data = json.loads(path.read_text()) if path.is_file() else {}
    for r in data.get("rows", []):
        r.setdefault("cpu", data.get("cpu", cpu))
    rows = [{**r, "cpu": r.get("cpu") or cpu} for r in rows]
    old = {_key(r): r for r in data.get("rows", [])}
    old.update({_key(r): r for r in rows})
    merged = sorted(old.values(), key=_order)
    data.update(command=__doc__.split("\n\n")[1].strip(), cpu=cost.reference_cpu(merged), rows=merged)
    if eval_rows:
        ev = {(r["kind"], r["size"]): r for r in data.get("eval_rows", [])}
        ev.update({(r["kind"], r["size"]): r for r in eval_rows})
        data["eval_rows"] = list(ev.values())
    data["fit"] = cost.fit_rows(data["rows"], features_of)
    write_record(path, data, command=data.pop("command"))
    if path.resolve() == OUT_JSON.resolve():  # a record elsewhere (a trial run) leaves the shipped costs alone
        cost.write_coefficients(data["fit"], source=str(path.relative_to(ROOT)), cpu=data["cpu"])
    print(format_table(data["rows"], data["cpu"]))


def run_args(scheme_name: str, size: str) -> tuple[str, list[str]]:
    """``(llmq scheme, extra llmq run arguments)`` of one bench row: ``SCHEMES``' and, on the demo,
    GPTQ/AWQ's group of 64 (its 576-wide layers do not split into 128s)."""
    scheme, extra = SCHEMES[scheme_name]
    if size == "demo" and scheme.startswith(("gptq", "awq")):
        extra = extra + ["--group-size", "64"]
    return scheme, extra


def bench_config(scheme_name: str, size: str) -> tuple[Any, Any, Path]:
    """``(scheme, config, model folder)`` of one bench row: its ``run_args`` read as the command line
    reads them (calibration, format, group size)."""
    from llmq.schemes import get_scheme

    scheme, extra = run_args(scheme_name, size)
    sch = get_scheme(scheme)
    flags = dict(zip(extra[::2], extra[1::2]))  # every extra argument is "--flag value"
    over: dict[str, Any] = {}
    if "--calibration" in flags:
        over.update(calibration=flags["--calibration"], n_samples=int(flags["--n-samples"]),
                    seqlen=int(flags["--seqlen"]))
    if "--format" in flags:
        over["format"] = flags["--format"]
    if "--group-size" in flags:
        over["group_size"] = int(flags["--group-size"])
    return sch, sch.config(**over), model_dir(Path(os.environ.get("LLMQ_SCALE_MODELS", "/tmp/llmq-scale")), size)


def features_of(scheme_name: str, size: str) -> dict:
    """The plugin's cost features of ``size``'s model under the bench settings."""
    from llmq.advisor.params import profile

    sch, cfg, src = bench_config(scheme_name, size)
    return sch.backend_cls().cost_features(profile(str(src)), sch, cfg).as_dict()


def whole_model_formula(scheme_name: str, size: str) -> float | None:
    """For a job that holds the whole model (unstreamed plugin, or an export), the peak RAM its
    plugin's formula gives, which ``run`` refuses by (GiB); None for streamed jobs."""
    from types import SimpleNamespace

    from llmq.pipeline.resources import projection, whole_model_gib

    sch, cfg, src = bench_config(scheme_name, size)
    prof, feats, _ = projection(SimpleNamespace(path=src, name=str(src), revision=None, trust_remote_code=False),
                                sch, cfg, sch.backend_cls())
    gib = whole_model_gib(prof, feats, sch, cfg, sch.backend_cls())
    return round(gib, 2) if gib is not None else None


#: settings that change a run's memory: glibc's allocator, GPTQModel's extension build cache
RUN_ENV = re.compile(r"MALLOC_\w+|GLIBC_TUNABLES|GPTQMODEL_TORCH_EXTENSIONS_DIR")


def run_env() -> dict[str, str]:
    """The memory settings this run was made under (``RUN_ENV``), recorded with its row."""
    return {k: v for k, v in sorted(os.environ.items()) if RUN_ENV.fullmatch(k)}


def _key(r: dict) -> tuple:
    return r["scheme"], r["size"], tuple(sorted((r.get("env") or {}).items())), r.get("cpu") or ""


def _order(r: dict) -> tuple:
    sizes = (*SIZES, "7B-2L")
    return r["scheme"], sizes.index(r["size"]) if r["size"] in sizes else len(sizes), _key(r)[2:]


def format_table(rows: list[dict], cpu: str | None = None) -> str:
    """One line per row; a row measured on another CPU than ``cpu`` (the reference) names its own."""
    out = [f"{'scheme':22} {'size':5} {'exit':>7} {'cgroup GiB':>10} {'anon GiB':>8} {'formula GiB':>11} {'wall s':>8} "
           f"{'projected s':>11} {'output GB':>9}"]
    for r in rows:
        ob = f"{r['output_bytes'] / 1e9:.2f}" if r.get("output_bytes") else "-"
        fg = f"{r['formula_gib']:.2f}" if r.get("formula_gib") else "-"
        pj = (r.get("layers") or {}).get("projected_total_s") if r.get("exit") != 0 else None  # stopped by --timeout
        out.append(f"{r['scheme']:22} {r['size']:5} {r['exit']:>7} {r['peak_cgroup_gib'] or 0:>10.2f} "
                   f"{r['peak_anon_gib'] or 0:>8.2f} {fg:>11} {r['wall_s']:>8.0f} {pj or '-':>11} {ob:>9}"
                   + "".join(f" {k}={v}" for k, v in (r.get("env") or {}).items())
                   + (f" [{r['cpu']}]" if cpu and r.get("cpu") not in (None, cpu) else ""))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
