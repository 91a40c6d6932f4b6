"""Fault injection: kill ``llmq run`` at random moments and check what it leaves behind.

Each trial starts ``python -m llmq run`` on a tiny random Llama (int8-dynamic or gptq-int4, alternating),
either into a fresh output folder or with ``--overwrite`` over a complete earlier result, and sends
SIGKILL / SIGTERM / SIGINT either at a uniformly random time within the run's measured duration or a
random 0-50 ms after the temporary ``.incomplete`` folder appears (the save window, which a uniform
time rarely hits). Then it checks:

- complete-or-absent: the output folder is missing, or it is a complete model folder (config.json,
  llmq.json, valid and finite safetensors); with ``--overwrite`` a missing folder counts as a loss;
- debris after the next run: one more ``run --overwrite`` (int8-dynamic, the cheap one) into the same
  output must leave no ``.NAME.*`` entry (temp folder, old folder, lock) beside it;
- source untouched: the source model's files hash the same as before.

    python scripts/bench_fault_injection.py --kills 20        # writes eval/fault_injection.json

``--kills N`` counts signals that reached a running process: a trial whose run had already finished
(a uniform time can fall after the end) is still checked and reported, but another trial is added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEME_ARGS = {
    "int8-dynamic": [],
    "gptq-int4": ["--calibration", "builtin", "--n-samples", "4", "--seqlen", "32"],
}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cmd(model: Path, scheme: str, out: Path, overwrite: bool) -> list[str]:
    cmd = [sys.executable, "-m", "llmq", "run", "--model", str(model), "--scheme", scheme, "-o", str(out),
           "--no-sample", *SCHEME_ARGS[scheme]]
    return cmd + (["--overwrite"] if overwrite else [])


LLMQ_PATH = str(ROOT)  # --llmq-tree: run another checkout's llmq (e.g. the base commit, for a before/after)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": LLMQ_PATH, "GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2"),
            "TOKENIZERS_PARALLELISM": "false"}


def _default_sigint() -> None:
    """A shell's background job (``... &``) starts with SIGINT ignored and children inherit that; the
    killed run must get SIGINT the way a terminal's Ctrl-C delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def complete(out: Path) -> tuple[bool, str]:
    """A complete llmq folder: config.json, llmq.json, tokenizer, valid finite safetensors."""
    sys.path.insert(0, str(ROOT))
    from llmq.safety import check_finite_safetensors
    from llmq.weightfiles import check_safetensors_folder

    try:
        for f in ("config.json", "llmq.json"):
            json.loads((out / f).read_text())
        if not list(out.glob("tokenizer*")):
            return False, "no tokenizer"
        if not list(out.glob("*.safetensors")):
            return False, "no safetensors"
        check_safetensors_folder(out)
        check_finite_safetensors(out)
    except Exception as e:  # noqa: BLE001 - any failure means incomplete
        return False, f"{type(e).__name__}: {str(e)[:120]}"
    return True, "ok"


def wait_for_incomplete(out: Path, proc: subprocess.Popen, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if any(n.endswith(".incomplete") for n in debris(out)):
            return True
        time.sleep(0.002)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20,
                    help="signals delivered to a running `run` (default 20); trials whose run finished before "
                         "its signal are recorded but do not count")
    ap.add_argument("--schemes", default="int8-dynamic,gptq-int4")
    ap.add_argument("--signals", default="KILL,KILL,TERM,INT", help="drawn at random per trial (repeat to weight)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "eval" / "fault_injection.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--llmq-tree", help="run `python -m llmq` from this checkout (default: this one)")
    args = ap.parse_args()
    global LLMQ_PATH
    if args.llmq_tree:
        LLMQ_PATH = str(Path(args.llmq_tree).resolve())
    rng = random.Random(args.seed)
    schemes = args.schemes.split(",")
    sigs = args.signals.split(",")

    work = Path(tempfile.mkdtemp(prefix="llmq-fault-"))
    sys.path.insert(0, str(ROOT))
    from llmq.testing import tiny_llama

    src = tiny_llama(work / "src")
    src_hash = tree_hash(src)

    # one clean run per scheme: its duration bounds the random kill time, its folder is the
    # "previous result" that --overwrite trials must not lose
    durations, previous = {}, {}
    for s in schemes:
        out = work / f"baseline-{s}"
        t0 = time.perf_counter()
        r = subprocess.run(run_cmd(src, s, out, False), env=env(), capture_output=True, text=True, cwd=work)
        durations[s] = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"baseline run of {s} failed")
        previous[s] = out
        print(f"baseline {s}: {durations[s]:.1f} s", flush=True)

    trials = []
    delivered = 0
    i = -1
    while delivered < args.kills and i < 3 * args.kills:
        i += 1
        scheme = schemes[i % len(schemes)]
        overwrite = rng.random() < 0.5
        target = "save-window" if rng.random() < 0.5 else "uniform"
        sig = sigs[rng.randrange(len(sigs))]
        out = work / f"t{i:02d}" / "out"
        out.parent.mkdir()
        if overwrite:
            shutil.copytree(previous[scheme], out)
        proc = subprocess.Popen(run_cmd(src, scheme, out, overwrite), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, cwd=work,  # cwd: `-m llmq` must not import ./llmq
                                preexec_fn=_default_sigint)
        t0 = time.perf_counter()
        if target == "uniform":
            delay = rng.uniform(0, durations[scheme])
            while time.perf_counter() - t0 < delay and proc.poll() is None:
                time.sleep(0.005)
            in_save = any(n.endswith(".incomplete") for n in debris(out))
        else:
            in_save = wait_for_incomplete(out, proc, durations[scheme] * 3)
            time.sleep(rng.uniform(0, 0.05))
        finished_before_kill = proc.poll() is not None
        if not finished_before_kill:
            proc.send_signal(SIGNALS[sig])
            delivered += 1
        killed_at = time.perf_counter() - t0
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        exists = out.exists()
        ok, why = complete(out) if exists else (True, "absent")
        lost_previous = overwrite and not exists
        debris_after_kill = debris(out)
        nxt = subprocess.run(run_cmd(src, "int8-dynamic", out, True), env=env(), capture_output=True, text=True,
                             cwd=work)
        debris_after_next = debris(out)
        trial = {
            "trial": i, "scheme": scheme, "mode": "overwrite" if overwrite else "fresh", "target": target,
            "signal": sig, "killed_at_s": round(killed_at, 3), "in_save_window": in_save,
            "finished_before_kill": finished_before_kill, "returncode": proc.returncode,
            "last_stderr_line": (err.strip().splitlines() or [""])[-1][:200],
            "output_exists": exists, "output_complete_or_absent": ok and not lost_previous, "detail": why,
            "previous_result_lost": lost_previous,
            "debris_after_kill": debris_after_kill,
            "next_run_returncode": nxt.returncode,
            "next_run_reported_cleanup": "left by a killed run" in nxt.stderr,
            "debris_after_next_run": debris_after_next,
            "source_untouched": tree_hash(src) == src_hash,
        }
        trials.append(trial)
        print(f"[trial {i + 1}, kill {delivered}/{args.kills}] {scheme:12s} {trial['mode']:9s} {target:11s} SIG{sig:4s} "
              f"t={killed_at:6.2f}s rc={proc.returncode} complete-or-absent={ok and not lost_previous} "
              f"debris-after-kill={len(debris_after_kill)} after-next={len(debris_after_next)}", flush=True)

    n = len(trials)

    def pct(key, want=True):
        return round(100.0 * sum(1 for t in trials if t[key] == want) / n, 1) if n else None

    summary = {
        "kills": sum(1 for t in trials if not t["finished_before_kill"]),
        "trials": n,
        "outputs_complete_or_absent_pct": pct("output_complete_or_absent"),
        "previous_result_lost": sum(t["previous_result_lost"] for t in trials),
        "trials_with_debris_after_next_run": sum(1 for t in trials if t["debris_after_next_run"]),
        "next_run_failed": sum(1 for t in trials if t["next_run_returncode"] != 0),
        "sources_untouched_pct": pct("source_untouched"),
        "kills_inside_save_window": sum(t["in_save_window"] for t in trials),
        "runs_finished_before_kill": sum(t["finished_before_kill"] for t in trials),
    }
    result = {
        "command": "python scripts/bench_fault_injection.py " + " ".join(sys.argv[1:]),
        "llmq_tree": LLMQ_PATH,
        "summary": summary,
        "baseline_run_seconds": {k: round(v, 2) for k, v in durations.items()},
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared with other jobs), Python {platform.python_version()}",
        "trials": trials,
    }
    print()
    print(f"{'metric':42s} value")
    for k, v in summary.items():
        print(f"{k:42s} {v}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    ok = (summary["outputs_complete_or_absent_pct"] == 100.0 and summary["trials_with_debris_after_next_run"] == 0
          and summary["sources_untouched_pct"] == 100.0 and summary["previous_result_lost"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
