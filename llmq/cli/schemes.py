"""``llmq schemes``: the scheme table, with what this install lacks for each; with ``--model``, whether
each scheme can quantize that model and why not (read from its config.json alone, no weights)."""

from __future__ import annotations

import argparse
import json
from typing import Any

# -- schemes ------------------------------------------------------------------------------------
def add_schemes(sub: Any) -> None:
    p = sub.add_parser("schemes", help="list the quantization schemes (--model: which work for a model)")
    p.add_argument("--model", help="Hub id, local folder or .gguf: say per scheme whether it can quantize this "
                                   "model and why not (reads config.json only)")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_schemes)


def scheme_rows(model: str | None = None, *, revision: str | None = None,
                trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """One row per scheme; with ``model``, ``works`` (bool) and ``why_not`` (None or one line) for it."""
    from llmq.schemes import SCHEMES

    support = None
    if model is not None:
        from llmq.schemes import support_for

        support = support_for(model, revision=revision, trust_remote_code=trust_remote_code)
    rows = []
    for name in SCHEMES:
        s = SCHEMES.get(name)
        b = s.backend_cls()
        row = {
            "name": name, "backend": s.backend, "bits": s.bits, "calibration": b.needs_calibration,
            "runtime": b.runtime, "installed": not b.missing_packages(), "extra": b.extra,
            "description": s.description,
        }
        if support is not None:
            row.update(works=support[name] is None, why_not=support[name])
        rows.append(row)
    return rows


def cmd_schemes(args: argparse.Namespace) -> int:
    rows = scheme_rows(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    yn = {True: "yes", False: "no"}
    t = Table(title="llmq schemes" + (f" for {args.model}" if args.model else ""))
    cols = ["name", "backend", "bits", "calibration?", "runtime", "installed?"]
    cols += ["works for this model?"] if args.model else ["description"]
    for col in cols:
        t.add_column(col)
    for r in rows:
        inst = "yes" if r["installed"] else f"no: pip install 'llmq[{r['extra']}]'"
        last = ("yes" if r["works"] else f"no: {r['why_not']}") if args.model else r["description"]
        t.add_row(r["name"], r["backend"], str(r["bits"]), yn[r["calibration"]], r["runtime"], inst, last)
    from llmq.fmt import console, term_width

    console(max(140, term_width())).print(t)
    return 0
