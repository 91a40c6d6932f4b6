"""``llmq bench``: prefill/decode speed of several models in one run (``llmq.benchmark.bench``)."""

from __future__ import annotations

import json
from typing import Any

from llmq.benchmark import bench, format_table
from llmq.errors import ConfigError


def add_bench(sub: Any) -> None:
    """``llmq bench MODEL [MODEL ...]`` ."""
    p = sub.add_parser("bench", help="prefill/decode speed, TTFT, peak RSS, load time; ratios to the first model",
                       description="Measures every MODEL in one run, one child process each, and prints one table "
                                   "with ratios to the first. MODEL: a folder, 'demo', a Hub id or a .gguf file "
                                   "(run on llama.cpp, batch 1 only); append @eager or @compile to force the "
                                   "torch mode.")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    p.add_argument("--samples", type=int, default=3, help="timed runs per batch size after one warm-up")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="rows as JSON instead of the table")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: Any) -> int:
    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}.") from None
    rows = bench(args.models, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch_sizes=sizes,
                 threads=args.threads, device=args.device, samples=args.samples)
    print(json.dumps([r.to_dict() for r in rows], indent=2) if args.json else format_table(rows))
    return 0
