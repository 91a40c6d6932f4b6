"""Write ``llmq/advisor/measured.json`` (the advisor's measured tables: ``llmq.advisor.measured``)
from the benchmark records in ``eval/``. Run it after a benchmark rewrote one of them
(``eval/bench_cpu_speed.json``, ``eval/bench_quantize.json``, ``eval/gpu/bench.json``); the JSON is
package data, so installs outside this repository quote the same numbers.

    python scripts/update_measured.py           # rewrite it
    python scripts/update_measured.py --check   # exit 1 when it differs from what eval/ gives
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import EVAL, write_json  # noqa: E402


def render(eval_dir: Path = EVAL) -> str:
    """measured.json's text as derived from ``eval_dir``."""
    from llmq.advisor.measured import from_eval

    return json.dumps(from_eval(eval_dir), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    from llmq.advisor.measured import DATA, from_eval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", default=str(EVAL), help="the benchmark records (default: this repository's eval/)")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when measured.json is stale")
    args = ap.parse_args(argv)
    text = render(Path(args.eval))
    current = DATA.read_text() if DATA.is_file() else None
    if args.check:
        if current != text:
            print(f"{DATA} is stale: run python scripts/update_measured.py", file=sys.stderr)
            return 1
        print(f"{DATA} matches {args.eval}")
        return 0
    write_json(DATA, from_eval(Path(args.eval)))
    print(f"wrote {DATA}" + (" (unchanged)" if current == text else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
