"""Fault injection: kill ``llmq run`` at random moments and check what it leaves behind.

Each trial starts ``python -m llmq run`` on a tiny random Llama with one of the ``--schemes`` (drawn in
turn): ``int8-dynamic``, ``gptq-int4``, ``gguf-q8_0`` (llama.cpp conversion in a scratch folder),
``qat-w8a8`` (a few training steps, a checkpoint after each), or ``int8-dynamic@gguf`` (the source is a
tiny ``.gguf``, dequantized into a fresh GGUF cache per trial). It writes either into a fresh output
folder or with ``--overwrite`` over a complete earlier result, and sends SIGKILL / SIGTERM / SIGINT
either at a uniformly random time within the run's measured duration or a random 0-50 ms after the
temporary ``.incomplete`` folder appears (the save window, which a uniform time rarely hits). Then it
checks:

- complete-or-absent: the output folder is missing, or it is a complete model folder (config.json,
  llmq.json, valid and finite safetensors; a GGUF output: llmq.json, one parseable .gguf, Modelfile);
  with ``--overwrite`` a missing folder counts as a loss; a QAT checkpoint left for ``--resume`` is
  complete (its JSON record and both safetensors files read) or absent;
- debris after the next run: one more ``run --overwrite`` into the same output (int8-dynamic; the same
  scheme for GGUF, whose scratch folders the next one sweeps, and for QAT, with ``--resume`` when a
  checkpoint was left) must leave no ``.NAME.*`` entry (temp folder, old folder, lock, checkpoint)
  beside it, no ``llmq-scratch.*`` folder in the temp directory, and no temp entry in the GGUF cache;
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
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the QAT runs: a few steps on a small text, a checkpoint after every step
QAT_ARGS = ["--seqlen", "32", "--set", "steps=6", "--set", "checkpoint_every=1", "--set", "batch_size=2",
            "--set", "warmup_steps=1", "--set", "eval_windows=2", "--set", "objective=lm"]
SCHEME_ARGS = {
    "int8-dynamic": [],
    "gptq-int4": ["--calibration", "builtin", "--n-samples", "4", "--seqlen", "32"],
    "gguf-q8_0": [],
    "qat-w8a8": QAT_ARGS,
    "int8-dynamic@gguf": [],
}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
#: set in main: the source of each kind of scheme, the QAT training text, the temp directory
SOURCES: dict[str, Path] = {}
QAT_TEXT: Path | None = None
TMPDIR: Path | None = None


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cmd(spec: str, out: Path, overwrite: bool, resume: bool = False) -> list[str]:
    scheme, _, kind = spec.partition("@")
    args = list(SCHEME_ARGS[spec])
    if scheme.startswith("qat-"):
        args += ["--set", f"data={QAT_TEXT}"]
    cmd = [sys.executable, "-m", "llmq", "run", "--model", str(SOURCES[f"{kind}-file" if kind else scheme.split("-")[0]]),
           "--scheme", scheme, "-o", str(out), "--no-sample", *args]
    return cmd + (["--overwrite"] if overwrite else []) + (["--resume"] if resume else [])


LLMQ_PATH = str(ROOT)  # --llmq-tree: run another checkout's llmq (e.g. the base commit, for a before/after)


def env(cache: Path | None = None) -> dict:
    e = {**os.environ, "PYTHONPATH": LLMQ_PATH, "GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2"),
         "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(TMPDIR)}
    if cache is not None:
        e["LLMQ_CACHE"] = str(cache)
    return e


def _default_sigint() -> None:
    """A shell's background job (``... &``) starts with SIGINT ignored and children inherit that; the
    killed run must get SIGINT the way a terminal's Ctrl-C delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def debris(out: Path) -> list[str]:
    """Entries beside the output: its temp/old folders, lock, QAT checkpoint and the checkpoint's own."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.", f"..{out.name}.")))


def scratch_left() -> list[str]:
    return sorted(p.name for p in TMPDIR.iterdir() if p.name.startswith("llmq-"))


def cache_debris(cache: Path) -> list[str]:
    """Temp entries (and entries holding code) in a GGUF cache."""
    root = cache / "gguf"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") or list(p.rglob("*.py")))


def complete(out: Path) -> tuple[bool, str]:
    """A complete llmq folder: config.json, llmq.json, tokenizer, valid finite safetensors; a GGUF
    output: llmq.json, one .gguf that gguf's reader parses, and its Modelfile."""
    sys.path.insert(0, str(ROOT))
    from llmq.safety import check_finite_safetensors
    from llmq.weightfiles import check_safetensors_folder

    try:
        json.loads((out / "llmq.json").read_text())
        ggufs = list(out.glob("*.gguf"))
        if ggufs:
            import gguf

            if len(ggufs) != 1 or not (out / "Modelfile").is_file():
                return False, f"{len(ggufs)} .gguf files, Modelfile {(out / 'Modelfile').is_file()}"
            gguf.GGUFReader(str(ggufs[0]))
            return True, "ok"
        json.loads((out / "config.json").read_text())
        if not list(out.glob("tokenizer*")):
            return False, "no tokenizer"
        if not list(out.glob("*.safetensors")):
            return False, "no safetensors"
        check_safetensors_folder(out)
        check_finite_safetensors(out)
    except Exception as e:  # noqa: BLE001 - any failure means incomplete
        return False, f"{type(e).__name__}: {str(e)[:120]}"
    return True, "ok"


def checkpoint_state(out: Path) -> str:
    """``absent``, ``complete`` (record and tensors read) or ``broken: ...`` for a QAT checkpoint."""
    ck = out.with_name(f".{out.name}.qat-checkpoint")
    if not ck.exists():
        return "absent"
    try:
        from safetensors import safe_open

        record = json.loads((ck / "qat_state.json").read_text())
        for f in ("model.safetensors", "optimizer.safetensors"):
            with safe_open(str(ck / f), "pt") as st:
                list(st.keys())
        return f"complete (step {record['step']})"
    except Exception as e:  # noqa: BLE001
        return f"broken: {type(e).__name__}: {str(e)[:100]}"


def wait_for_incomplete(out: Path, proc: subprocess.Popen, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if any(n.endswith(".incomplete") and not n.startswith(f"..{out.name}.") for n in debris(out)):
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
    add_json_arg(ap, ROOT / "eval" / "fault_injection.json")
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
    global QAT_TEXT, TMPDIR
    TMPDIR = work / "tmp"
    TMPDIR.mkdir()
    sys.path.insert(0, str(ROOT))
    from llmq.testing import tiny_llama

    src = tiny_llama(work / "src")
    SOURCES.update({"int8": src, "gptq": src, "qat": src})
    if any(s.startswith("gguf-") for s in schemes):
        from llmq.testing_gguf import tiny_model

        SOURCES["gguf"] = tiny_model(work / "src-gguf", "llama")  # SmolLM2's tokenizer: llama.cpp converts it
    if any(s.endswith("@gguf") for s in schemes):
        from llmq.testing_gguf import write_tiny_gguf

        SOURCES["gguf-file"] = write_tiny_gguf(work / "src-file" / "tiny.gguf")
    if any(s.startswith("qat-") for s in schemes):
        import pydoc_data.topics

        QAT_TEXT = work / "train.txt"
        QAT_TEXT.write_text("\n\n".join(list(pydoc_data.topics.topics.values())[:40]))
    src_hashes = {k: tree_hash(v if v.is_dir() else v.parent) for k, v in SOURCES.items()}

    # one clean run per scheme: its duration bounds the random kill time, its folder is the
    # "previous result" that --overwrite trials must not lose
    durations, previous = {}, {}
    for s in schemes:
        out = work / f"baseline-{s.replace('@', '-')}"
        t0 = time.perf_counter()
        r = subprocess.run(run_cmd(s, out, False), env=env(work / f"cache-{s}"), capture_output=True, text=True,
                           cwd=work)
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
        cache = out.parent / "cache"  # a fresh GGUF cache per trial: a .gguf source is dequantized under the kill
        if overwrite:
            shutil.copytree(previous[scheme], out)
        proc = subprocess.Popen(run_cmd(scheme, out, overwrite), env=env(cache), stdout=subprocess.DEVNULL,
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
        scratch_after_kill = scratch_left()
        ck = checkpoint_state(out)
        # the next run: the same scheme where its own leftovers are its business (GGUF scratch, QAT
        # checkpoint, resumed when there is one), else the cheap int8-dynamic
        nxt_scheme = scheme if scheme.startswith(("gguf-", "qat-")) or scheme.endswith("@gguf") else "int8-dynamic"
        resume = scheme.startswith("qat-") and ck.startswith("complete")
        nxt = subprocess.run(run_cmd(nxt_scheme, out, True, resume=resume), env=env(cache), capture_output=True,
                             text=True, cwd=work)
        debris_after_next = debris(out) + scratch_left() + cache_debris(cache)
        trial = {
            "trial": i, "scheme": scheme, "mode": "overwrite" if overwrite else "fresh", "target": target,
            "signal": sig, "killed_at_s": round(killed_at, 3), "in_save_window": in_save,
            "finished_before_kill": finished_before_kill, "returncode": proc.returncode,
            "last_stderr_line": (err.strip().splitlines() or [""])[-1][:200],
            "output_exists": exists, "output_complete_or_absent": ok and not lost_previous, "detail": why,
            "previous_result_lost": lost_previous,
            "debris_after_kill": debris_after_kill, "scratch_after_kill": scratch_after_kill,
            "checkpoint_after_kill": ck, "checkpoint_complete_or_absent": not ck.startswith("broken"),
            "next_run": nxt_scheme + (" --resume" if resume else ""),
            "next_run_returncode": nxt.returncode,
            "next_run_last_stderr_line": (nxt.stderr.strip().splitlines() or [""])[-1][:200],
            "next_run_reported_cleanup": "left by a killed run" in nxt.stderr,
            "debris_after_next_run": debris_after_next,
            "source_untouched": all(tree_hash(v if v.is_dir() else v.parent) == src_hashes[k] for k, v in SOURCES.items()),
        }
        trials.append(trial)
        print(f"[trial {i + 1}, kill {delivered}/{args.kills}] {scheme:17s} {trial['mode']:9s} {target:11s} SIG{sig:4s} "
              f"t={killed_at:6.2f}s rc={proc.returncode} complete-or-absent={ok and not lost_previous} "
              f"debris-after-kill={len(debris_after_kill)} scratch={len(scratch_after_kill)} ck={ck} "
              f"next rc={nxt.returncode} after-next={len(debris_after_next)}", flush=True)

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
        "checkpoints_complete_or_absent_pct": pct("checkpoint_complete_or_absent"),
        "trials_per_scheme": {s: sum(1 for t in trials if t["scheme"] == s) for s in schemes},
        "kills_inside_save_window": sum(t["in_save_window"] for t in trials),
        "runs_finished_before_kill": sum(t["finished_before_kill"] for t in trials),
    }
    result = {
        "llmq_tree": LLMQ_PATH,
        "summary": summary,
        "baseline_run_seconds": {k: round(v, 2) for k, v in durations.items()},
        "trials": trials,
    }
    print()
    print(f"{'metric':42s} value")
    for k, v in summary.items():
        print(f"{k:42s} {v}")
    write_record(args.json, result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    ok = (summary["outputs_complete_or_absent_pct"] == 100.0 and summary["trials_with_debris_after_next_run"] == 0
          and summary["sources_untouched_pct"] == 100.0 and summary["previous_result_lost"] == 0
          and summary["checkpoints_complete_or_absent_pct"] == 100.0 and summary["next_run_failed"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
