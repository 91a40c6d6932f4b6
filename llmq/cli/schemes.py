"""``llmq schemes``: the scheme table, with what this install lacks for each."""

from __future__ import annotations

import argparse
import json
from typing import Any

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
            "runtime": b.runtime, "installed": not b.missing_packages(), "extra": b.extra,
            "description": s.description,
        })
    return rows


def cmd_schemes(args: argparse.Namespace) -> int:
    rows = scheme_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    yn = {True: "yes", False: "no"}
    t = Table(title="llmq schemes")
    for col in ("name", "backend", "bits", "calibration?", "runtime", "installed?", "description"):
        t.add_column(col)
    for r in rows:
        inst = "yes" if r["installed"] else f"no: pip install 'llmq[{r['extra']}]'"
        t.add_row(r["name"], r["backend"], str(r["bits"]), yn[r["calibration"]], r["runtime"], inst, r["description"])
    from llmq.fmt import console, term_width

    console(max(140, term_width())).print(t)
    return 0
