"""Task accuracy of several models on whole task sets, in one run: is a quantized model's drop
real or the noise of a 200-example sample? (200 examples: one example is 0.5 points and the
standard error about 3.5 points; the whole arc_easy/piqa sets bring it near 1.)

The first model is the reference; every other row shows its drop in points, with a paired
bootstrap 95% interval (same examples, resampled together).

    LLMQ_DATA_DIR=../shared/data python scripts/bench_task_drop.py demo out/qat-int4 out/awq-int4 \\
        --tasks arc_easy,piqa --json eval/bench_task_drop.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="'demo' (the offline original) or llmq output folders; the first is the reference")
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    add_json_arg(ap)
    args = ap.parse_args()

    import numpy as np

    import llmq
    from llmq.eval.tasks import resolve_task, run_task
    from llmq.models import resolve_model

    for m in args.models:  # every input checked before the first model loads
        if m != "demo" and not (Path(m) / "config.json").is_file():
            ap.error(f"{m} is not a model folder (no config.json) and not 'demo'")
    tasks = [resolve_task(t) for t in args.tasks.split(",") if t]
    out: dict = {"limit": args.limit, "models": {}, "drops": {}}
    per_example: dict = {}
    for m in args.models:
        t0 = time.perf_counter()
        if m == "demo":
            from transformers import AutoModelForCausalLM

            src = resolve_model(None)
            model = AutoModelForCausalLM.from_pretrained(src.local_dir(), dtype="float32").eval()
            tok = src.tokenizer()
        else:
            model, tok = llmq.load(m, device="cpu")
        r = {}
        for spec in tasks:
            res = run_task(model, tok, spec, limit=args.limit, progress=True, per_example=True)
            r[spec.name] = {"acc": res["acc"], "acc_norm": res.get("acc_norm"), "n": res["n"]}
            per_example[(m, spec.name)] = np.asarray(res["correct"], dtype=float)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        out["models"][m] = r
        print(f"{m:50s} " + "  ".join(f"{t.name} {r[t.name]['acc']:.4f} (n={r[t.name]['n']})" for t in tasks), flush=True)
        del model
        drops(out, per_example, tasks, args)  # after every model: a cut-short run keeps what it measured
    print(f"\n{'model':50s} " + "  ".join(f"{t.name} drop (95% CI)" for t in tasks))
    for m, d in out["drops"].items():
        print(f"{m:50s} " + "  ".join(f"{d[t.name]['drop_points']:+.2f} {d[t.name]['ci95']}" for t in tasks))
    return 0


def drops(out: dict, per_example: dict, tasks, args) -> None:
    """Each model's drop against the first, with a paired bootstrap interval; writes the JSON."""
    import numpy as np

    ref = args.models[0]
    rng = np.random.default_rng(0)
    for m in [m for m in args.models[1:] if m in out["models"]]:
        d = {}
        for spec in tasks:
            a, b = per_example[(ref, spec.name)], per_example[(m, spec.name)]
            drop = 100 * (out["models"][ref][spec.name]["acc"] - out["models"][m][spec.name]["acc"])
            ci = None
            if len(a) and len(a) == len(b):
                idx = rng.integers(0, len(a), (args.bootstrap, len(a)))
                boot = 100 * (a[idx].mean(1) - b[idx].mean(1))
                ci = [round(float(np.percentile(boot, 2.5)), 2), round(float(np.percentile(boot, 97.5)), 2)]
            d[spec.name] = {"drop_points": round(drop, 2), "ci95": ci}
        out["drops"][m] = d
    write_record(args.json, out)


if __name__ == "__main__":
    raise SystemExit(main())
