"""Wall time of llmq's task evaluation vs lm-evaluation-harness on the same model object and documents
(arc_easy and piqa, first N examples of the local files, lm-eval's own prompts via the custom tasks in
eval/lm_eval_tasks/), measured in one run, with both accuracies side by side.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_eval.py --limit 200

Writes a table to stdout and JSON to eval/bench_eval.json (``--json`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = {"arc_easy": "arc_easy_test.jsonl", "piqa": "piqa_valid.jsonl"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="documents per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tasks", default=",".join(TASKS))
    add_json_arg(ap)
    args = ap.parse_args()
    os.environ.setdefault("LLMQ_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq.eval import lm_eval_bridge
    from llmq.eval.tasks import run_task
    from llmq.models import resolve_model

    src = resolve_model(None).local_dir()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    data = Path(os.environ["LLMQ_DATA_DIR"]) / "tasks"
    rows = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        cfg = lm_eval_bridge.local_task(ROOT / "eval" / "lm_eval_tasks" / f"{task}_local.yaml", data / TASKS[task])
        t0 = time.perf_counter()
        ours = run_task(model, tok, task, limit=args.limit, batch_size=args.batch_size, progress=False)
        t1 = time.perf_counter()
        ref = lm_eval_bridge.run(model, tok, [cfg], limit=args.limit, batch_size=args.batch_size, progress=False)
        t2 = time.perf_counter()
        whole = run_task(model, tok, task, limit=args.limit, batch_size=args.batch_size, progress=False,
                         share_context=False)  # the KV-sharing ablation: every sequence whole, as lm-eval
        t3 = time.perf_counter()
        assert whole["acc"] == ours["acc"], (whole, ours)
        ref = next(iter(ref.values()))
        rows.append({"task": task, "n": ours["n"], "llmq_s": round(t1 - t0, 2), "lm_eval_s": round(t2 - t1, 2),
                     "llmq_no_sharing_s": round(t3 - t2, 2),
                     "speedup": round((t2 - t1) / (t1 - t0), 2), "llmq_acc": ours["acc"], "lm_eval_acc": ref["acc"],
                     "llmq_acc_norm": ours["acc_norm"], "lm_eval_acc_norm": ref["acc_norm"]})
        print(json.dumps(rows[-1]), flush=True)
    total_ours = sum(r["llmq_s"] for r in rows)
    total_ref = sum(r["lm_eval_s"] for r in rows)
    md = ["| task | docs | llmq (s) | lm-eval (s) | lm-eval / llmq | llmq, no KV sharing (s) | acc llmq | acc lm-eval "
          "| acc_norm llmq | acc_norm lm-eval |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['task']} | {r['n']} | {r['llmq_s']:.1f} | {r['lm_eval_s']:.1f} | {r['speedup']:.2f}x | "
                  f"{r['llmq_no_sharing_s']:.1f} | {r['llmq_acc']:.3f} | {r['lm_eval_acc']:.3f} | "
                  f"{r['llmq_acc_norm']:.3f} | {r['lm_eval_acc_norm']:.3f} |")
    md.append(f"| total | | {total_ours:.1f} | {total_ref:.1f} | {total_ref / total_ours:.2f}x | "
              f"{sum(r['llmq_no_sharing_s'] for r in rows):.1f} | | | | |")
    print("\n" + "\n".join(md))
    out = {"model": "SmolLM2-135M-Instruct (fp32, dequantized from the demo GGUF)", "device": "cpu",
           "threads": torch.get_num_threads(), "rows": rows,
           "total_llmq_s": round(total_ours, 2), "total_lm_eval_s": round(total_ref, 2),
           "lm_eval_over_llmq": round(total_ref / total_ours, 2), "markdown": "\n".join(md)}
    write_record(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
