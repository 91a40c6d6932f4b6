"""What the source NaN/Inf check costs: ``llmq.safety.check_finite_safetensors`` on the demo model's
dequantized folder (SmolLM2-135M, fp32), against a whole int8-dynamic ``llmq.quantize`` with and
without the check (same process, alternating, so machine load hits both alike).

    python scripts/bench_nan_check.py            # writes eval/nan_check_cost.json (``--json`` to change)

``REPS`` (environment, default 3): alternating repetitions of the three timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_arg(ap, ROOT / "eval" / "nan_check_cost.json")
    args = ap.parse_args()

    import llmq
    from llmq import safety
    from llmq.models import folder_size, resolve_model

    reps = int(os.environ.get("REPS", "3"))
    folder = resolve_model(None).local_dir()
    check_s, with_s, without_s = [], [], []
    real = safety.check_finite_safetensors
    for _ in range(reps):
        t = time.perf_counter()
        real(folder, "source")
        check_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        llmq.quantize(None, "int8-dynamic", device="cpu")
        with_s.append(time.perf_counter() - t)
        safety.check_finite_safetensors = lambda *a, **k: None
        try:
            t = time.perf_counter()
            llmq.quantize(None, "int8-dynamic", device="cpu")
            without_s.append(time.perf_counter() - t)
        finally:
            safety.check_finite_safetensors = real
    med = {k: round(statistics.median(v), 2) for k, v in
           (("check_s", check_s), ("quantize_with_check_s", with_s), ("quantize_without_check_s", without_s))}
    med["check_share_of_quantize"] = round(med["check_s"] / med["quantize_with_check_s"], 3)
    result = {"folder_bytes": folder_size(folder), "reps": reps,
              "median": med, "all": {"check_s": check_s, "with": with_s, "without": without_s}}
    print(f"{'metric':28s} value")
    for k, v in med.items():
        print(f"{k:28s} {v}")
    write_record(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
