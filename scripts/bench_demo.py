"""The offline demo with every scheme that runs on CPU: ``python -m llmq run --scheme S`` exactly as a
new user types it (no model, no other flag), each in its own process and output folder.

Per scheme: exit code, wall and CPU seconds, the verification line and the sample the run printed,
and whether the folder holds a complete output (``llmq.json``). A scheme passes when the command exits
0, verification passed and the sample is non-empty. Exit status 1 when any scheme did not pass.

    python scripts/bench_demo.py                       # every CPU scheme; table + eval/bench_demo.json
    python scripts/bench_demo.py --schemes int8-static,awq-int4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402


def cpu_schemes() -> list[str]:
    """Every registered scheme whose checks pass for the demo on CPU here (``llmq.core.prepare``:
    packages, device, the demo's shapes): what the demo must run."""
    from llmq.core import prepare
    from llmq.errors import LlmqError
    from llmq.pipeline.run import demo_overrides
    from llmq.schemes import SCHEMES

    out = []
    for name in SCHEMES:
        try:
            prepare(None, name, device="cpu", **demo_overrides(name))
        except LlmqError as e:
            print(f"{name}: not run on CPU here: {e}")
            continue
        out.append(name)
    return out


def run_one(scheme: str, work: Path, timeout: int) -> dict:
    out = work / scheme
    cmd = [sys.executable, "-m", "llmq", "run", "--scheme", scheme, "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before, t = os.times(), time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        code, raw = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:  # its output comes as bytes, whatever ``text`` says
        code, raw = "timeout", e.stdout or b""
    text = raw.decode(errors="replace")
    after = os.times()
    verification = next((ln.strip() for ln in text.splitlines() if "verification " in ln), "")
    sample = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.strip().lower().startswith("sample")), "")
    meta = out / "llmq.json"
    size = json.loads(meta.read_text()).get("size_bytes", {}).get("after") if meta.is_file() else None
    row = {"scheme": scheme, "exit": code, "wall_s": round(time.perf_counter() - t, 1),
           "cpu_s": round(after.children_user - before.children_user + after.children_system - before.children_system, 1),
           "complete": meta.is_file(), "size_bytes": size, "verification": verification, "sample": sample[:80],
           "command": f"python -m llmq run --scheme {scheme}"}
    row["passed"] = code == 0 and row["complete"] and "verification passed" in verification and bool(sample)
    if not row["passed"]:
        row["tail"] = text[-1500:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schemes", help="comma-separated (default: every scheme that runs on CPU here)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per scheme")
    ap.add_argument("--keep", help="keep the outputs in this folder (default: a temporary one, removed)")
    ap.add_argument("--update", action="store_true", help="keep the record's rows of other schemes")
    add_json_arg(ap)
    a = ap.parse_args()
    schemes = a.schemes.split(",") if a.schemes else cpu_schemes()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="llmq-bench-demo-"))
    kept = []
    if a.update and Path(a.json).is_file():
        kept = [r for r in json.loads(Path(a.json).read_text())["rows"] if r["scheme"] not in schemes]
    rows = []
    try:
        for s in schemes:
            shutil.rmtree(work / s, ignore_errors=True)
            r = run_one(s, work, a.timeout)
            rows.append(r)
            short = re.sub(r" \(.*", "", r["verification"])[:90]
            print(f"{s:>13}  exit {r['exit']!s:>7}  {r['wall_s']:7.1f} s  {'PASS' if r['passed'] else 'FAIL'}  {short}",
                  flush=True)
            every = kept + rows
            write_record(a.json, {"rows": every, "passed": sum(r["passed"] for r in every), "of": len(every)},
                         quiet=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{sum(r['passed'] for r in rows)}/{len(rows)} schemes passed; wrote {a.json}")
    sys.exit(0 if all(r["passed"] for r in rows) else 1)


if __name__ == "__main__":
    main()
