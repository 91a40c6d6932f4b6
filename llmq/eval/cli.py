"""``llmq eval`` and ``llmq compare``, and the ``--eval`` step of ``llmq run``. Torch-free at import."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from llmq.errors import LlmqError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ppl", default="wikitext2",
                   help="perplexity text: wikitext2, c4, a local .txt file, or none (default wikitext2)")
    p.add_argument("--tasks", help="comma-separated: arc_easy, piqa, hellaswag, lambada, a .jsonl file, "
                                   "name=file.jsonl, or lm_eval:<task> (lm-evaluation-harness)")
    p.add_argument("--limit", type=int, help="perplexity windows and examples per task (default: all)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (default 2048)")
    p.add_argument("--stride", type=int, help="sliding-window stride (default: seqlen, non-overlapping)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="questions (a context with all its choices) per forward pass (default 16)")
    p.add_argument("--no-speed", action="store_true", help="skip the prefill/decode speed measurement")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def _gate(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy gate (exit 1 when a limit is exceeded; the report is written either way)")
    g.add_argument("--max-ppl-increase", help="relative perplexity increase, e.g. 5%% or 0.05")
    g.add_argument("--max-accuracy-loss", type=float, help="accuracy points any task may lose (1.0 = one point)")
    g.add_argument("--max-kld", type=float, help="mean KL divergence to the original, in nats")


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate one model: perplexity, task accuracy, cost (and KLD with --reference)")
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--reference", help="reference model (folder or Hub id) for KL divergence and deltas")
    p.add_argument("--output", "-o", help="folder to write report.json/report.md/report.png into")
    _common(p)
    _gate(p)
    p.set_defaults(func=cmd_eval)


def add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="evaluate an original and its quantized copy under the same protocol")
    p.add_argument("--original", required=True, help="original model folder or Hub id")
    p.add_argument("--quantized", required=True, help="quantized model folder")
    p.add_argument("--output", "-o", help="folder for report.json/report.md/report.png "
                                          "(default: the quantized folder, when it is local)")
    _common(p)
    _gate(p)
    p.set_defaults(func=cmd_compare)


def _gate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_ppl_increase": getattr(args, "max_ppl_increase", None),
            "max_accuracy_loss": getattr(args, "max_accuracy_loss", None),
            "max_kld": getattr(args, "max_kld", None)}


def _ppl_arg(value: Any) -> Any:
    return None if value is None or str(value).lower() == "none" else value


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    from llmq.eval.report import rows

    has_ref = bool(report.get("original"))
    t = Table(title="llmq evaluation")
    for col in (("metric", "original", "quantized", "change") if has_ref else ("metric", "value")):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for label, a, b, ch in rows(report):
        t.add_row(*((label, a, b, ch) if has_ref else (label, b)))
    con = Console(width=120)
    con.print(t)
    proto = report.get("protocol") or {}
    if proto.get("ppl"):
        con.print(f"perplexity protocol: {proto['ppl']}", highlight=False)
    for name, text in (proto.get("tasks") or {}).items():
        con.print(f"{name}: {text}", highlight=False)


def _finish(report: dict, out_dir: Path | None, as_json: bool) -> int:
    if out_dir is not None:
        from llmq.eval.report import write_report

        write_report(report, out_dir)
    _print(report, as_json)
    if out_dir is not None and not as_json:
        print(f"wrote {out_dir / 'report.json'}, report.md, report.png")
    gate = report.get("gate")
    if gate:
        print(gate["verdict"], file=sys.stdout)
        return 0 if gate["passed"] else 1
    return 0


def _run(original: Any, quantized: Any, args: argparse.Namespace, out_dir: Path | None, tasks: Any) -> int:
    from llmq.eval.api import DEFAULT_GATE_TASKS, evaluate, split_tasks
    from llmq.eval.gate import check_gate, gate_set, validate

    from llmq.safety import check_eval_options, check_report_dir

    check_eval_options(seqlen=getattr(args, "seqlen", None), stride=getattr(args, "stride", None),
                       batch_size=getattr(args, "batch_size", None), limit=args.limit)
    check_report_dir(out_dir)
    gk = _gate_kwargs(args)
    validate(**gk)
    if gate_set(**gk) and original is None:
        raise LlmqError("A gate compares against the original: pass --reference.")
    if gk["max_accuracy_loss"] is not None and not split_tasks(tasks):
        tasks = list(DEFAULT_GATE_TASKS)
        print(f"llmq eval: --max-accuracy-loss without --tasks: evaluating {', '.join(tasks)}", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _one_line_warning
        rep = evaluate(quantized, ppl=_ppl_arg(args.ppl), tasks=tasks, limit=args.limit,
                       seqlen=getattr(args, "seqlen", None) or 2048, stride=getattr(args, "stride", None),
                       reference=original, device=args.device, batch_size=getattr(args, "batch_size", 16),
                       speed=not getattr(args, "no_speed", False))
    report = rep.to_dict()
    if gate_set(**gk):
        report["gate"] = check_gate(report, **gk).to_dict()
    return _finish(report, out_dir, getattr(args, "json", False))


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"llmq: note: {message}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    return _run(args.reference, args.model, args, out, args.tasks)


def cmd_compare(args: argparse.Namespace) -> int:
    q = Path(args.quantized).expanduser()
    out = Path(args.output) if args.output else (q if q.is_dir() else None)
    if out is None:
        raise LlmqError("--quantized is not a local folder: pass --output for the report.")
    return _run(args.original, args.quantized, args, out, args.tasks)


def evaluate_after_run(args: argparse.Namespace, path: str | Path) -> int:
    """``llmq run ... --eval``: compare the saved folder with the model it came from, write the report
    into that folder, print the table and the verdict; 0 on pass (or no gate), 1 on failure."""
    from llmq.core import read_meta
    from llmq.models import resolve_model

    path = Path(path)
    meta = read_meta(path) or {}
    src = meta.get("source") or {}
    name = src.get("name")
    if src.get("kind") == "gguf" and name and not str(name).endswith(".gguf") and not Path(name).exists():
        name = None  # the offline demo: its GGUF ships in a package; `name` is its Hub id, not a path
    if not src:
        raise LlmqError(f"{path} has no llmq.json: cannot tell which model it was quantized from.")
    original = resolve_model(name).local_dir()
    ns = argparse.Namespace(
        ppl=args.ppl if getattr(args, "ppl", None) is not None else "wikitext2",
        limit=getattr(args, "limit", None), seqlen=getattr(args, "eval_seqlen", None) or 2048, stride=None,
        device=getattr(args, "device", None), batch_size=16, no_speed=False, json=False, **_gate_kwargs(args))
    return _run(str(original), str(path), ns, path, getattr(args, "tasks", None))
