"""``llmq eval`` and ``llmq compare``, and the ``--eval`` step of ``llmq run``. Torch-free at import."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

from llmq.errors import LlmqError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ppl", default="wikitext2",
                   help="perplexity text: wikitext2, c4, a local .txt file, or none (default wikitext2)")
    p.add_argument("--tasks", help="comma-separated list; each item is one of: a registered task (arc_easy, piqa, "
                                   "hellaswag, lambada; read from LLMQ_DATA_DIR/tasks or the Hub); FILE.jsonl (your "
                                   "own task, its shape detected from the first row's fields); NAME=FILE.jsonl (a "
                                   "registered task read from FILE: NAME's prompt and field names, your rows); "
                                   "lm_eval:TASK (lm-evaluation-harness); or none (default: no tasks)")
    p.add_argument("--task-fields", metavar="CANONICAL=FIELD,...",
                   help="field names of a task file that differ from llmq's: e.g. contexts=context_options,"
                        "gold=label (canonical names: query, choices, gold, context, continuation, contexts)")
    p.add_argument("--limit", type=int, help="perplexity windows and examples per task (default: all)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (default 2048)")
    p.add_argument("--stride", type=int, help="sliding-window stride (default: seqlen, non-overlapping)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="questions (a context with all its choices) per forward pass (default 16)")
    p.add_argument("--no-speed", action="store_true", help="skip the prefill/decode speed measurement")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table "
                                                       "(stdout holds the JSON only; notes go to stderr)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model folder's own Python (config auto_map, modeling_*.py); refused otherwise")


def _gate(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy gate (exit 1 when a limit is exceeded; the report is written either way)")
    g.add_argument("--max-ppl-increase", help="relative perplexity increase, e.g. 5%% or 0.05")
    g.add_argument("--max-accuracy-loss", type=float, help="accuracy points any task may lose (1.0 = one point)")
    g.add_argument("--max-kld", type=float, help="mean KL divergence to the original, in nats")


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate one model: perplexity, task accuracy, cost (and KLD with --reference)")
    p.add_argument("--model", required=True, help="model folder, .gguf file or Hub id (what `run` accepts)")
    p.add_argument("--reference", help="reference model (folder, .gguf file or Hub id) for KL divergence and deltas")
    p.add_argument("--output", "-o", help="folder to write report.json/report.md/report.png into")
    _common(p)
    _gate(p)
    p.set_defaults(func=cmd_eval)


def add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="evaluate an original and its quantized copy under the same protocol")
    p.add_argument("--original", required=True, help="original model: folder, .gguf file or Hub id (what `run` "
                                                      "accepts, e.g. the file you quantized from)")
    p.add_argument("--quantized", required=True, help="quantized model folder (or any source `run` accepts)")
    p.add_argument("--output", "-o", help="folder for report.json/report.md/report.png "
                                          "(default: the quantized folder, when it is local)")
    _common(p)
    _gate(p)
    p.set_defaults(func=cmd_compare)


def _gate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_ppl_increase": args.max_ppl_increase, "max_accuracy_loss": args.max_accuracy_loss,
            "max_kld": args.max_kld}


def _ppl_arg(value: Any) -> Any:
    return None if value is None or str(value).lower() == "none" else value


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(report, indent=2, default=str))
        return
    from rich.table import Table

    from llmq.eval.report import rows
    from llmq.fmt import console

    has_ref = bool(report.get("original"))
    t = Table(title="llmq evaluation")
    for col in (("metric", "original", "quantized", "change") if has_ref else ("metric", "value")):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for label, a, b, ch in rows(report):
        t.add_row(*((label, a, b, ch) if has_ref else (label, b)))
    con = console(120)
    con.print(t)
    proto = report.get("protocol") or {}
    if proto.get("ppl"):
        con.print(f"perplexity protocol: {proto['ppl']}", highlight=False)
    for name, text in (proto.get("tasks") or {}).items():
        con.print(f"{name}: {text}", highlight=False)


def finish(report: dict, out_dir: Path | None, as_json: bool = False) -> int:
    """Print the report (written already) and the gate's verdict; the exit code."""
    _print(report, as_json)
    if out_dir is not None and not as_json:
        print(f"wrote {out_dir / 'report.json'}, report.md, report.png")
    gate = report.get("gate")
    if gate:
        print(gate["verdict"], file=sys.stderr if as_json else sys.stdout)
        return 0 if gate["passed"] else 1
    return 0


def _run(original: Any, quantized: Any, args: argparse.Namespace, out_dir: Path | None, tasks: Any) -> int:
    from llmq.eval.api import assess

    with one_line_warnings():
        report = assess(quantized, reference=original, ppl=_ppl_arg(args.ppl), tasks=tasks, limit=args.limit,
                        seqlen=args.seqlen, stride=args.stride, out_dir=out_dir, device=args.device,
                        batch_size=args.batch_size, speed=not args.no_speed, task_fields=args.task_fields,
                        trust_remote_code=args.trust_remote_code,
                        note=lambda text: print(text, file=sys.stderr, flush=True), **_gate_kwargs(args))
    return finish(report, out_dir, args.json)


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"llmq: note: {message}", file=sys.stderr)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Evaluation warnings (a seqlen capped to the model's maximum, ...) as one ``llmq: note:`` line each."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _one_line_warning
        yield


def cmd_eval(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    return _run(args.reference, args.model, args, out, args.tasks)


def cmd_compare(args: argparse.Namespace) -> int:
    q = Path(args.quantized).expanduser()
    out = Path(args.output) if args.output else (q if q.is_dir() else None)
    if out is None:
        raise LlmqError("--quantized is not a local folder: pass --output for the report.")
    return _run(args.original, args.quantized, args, out, args.tasks)
