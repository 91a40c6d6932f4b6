"""INT8 on the SmolLM2 demo: fp32 vs int8-dynamic vs int8-static (minmax, percentile, entropy).

Quantizes each variant into ``--work`` (kept, so reruns skip it), then measures in one run:
size on disk; WikiText-2 perplexity (``--ppl-windows`` x 1024 tokens); arc_easy and piqa accuracy
(``--limit`` docs each); and speed with :func:`llmq.bench` (fp32 eager is 1.0 and runs again last, so
the baseline's drift is on record; int8 folders run compiled through :mod:`llmq.fastpath`). The
machine may be shared: compare ratios only.

    python scripts/bench_int8.py --stages size,quality,speed --redo   # all in one run (the README's table)
    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_int8.py --stages size,quality   # quality (any time)
    python scripts/bench_int8.py --stages speed     # speed on a quiet machine; reuses the folders in --work

Writes a table to stdout and JSON to eval/bench_int8.json (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, command_line, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "int8-static-minmax": ("int8-static", {"calibration_method": "minmax"}),
    "int8-static-percentile": ("int8-static", {"calibration_method": "percentile"}),
    "int8-static-entropy": ("int8-static", {"calibration_method": "entropy"}),
    "int8-dynamic": ("int8-dynamic", {}),
}
EXTRA = {  # not in the default run; name them with --variants
    # lm_head with int8 per-token activations: the int8 GEMM under Inductor (speed), +~0.7% perplexity
    "int8-static-percentile-int8head": ("int8-static", {"calibration_method": "percentile",
                                                        "lm_head_activations": "int8"}),
    "int8-static-percentile-dyn30": ("int8-static", {"calibration_method": "percentile", "max_dynamic_fraction": 0.3}),
}
ALL = {**VARIANTS, **EXTRA}


def build(work: Path, names: list[str], n_samples: int, create: bool = True) -> dict[str, Path]:
    """The variants' folders in ``work``, quantizing missing ones when ``create`` (a speed-only run
    never calibrates: it benches the folders the quality run left)."""
    import llmq

    out = {}
    for name in names:
        path = work / name
        if not (path / "config.json").is_file() and not create:
            print(f"skipping {name}: no folder at {path} (run --stages size,quality first)", flush=True)
            continue
        if not (path / "config.json").is_file():
            scheme, kw = ALL[name]
            if scheme == "int8-static":
                kw = {**kw, "calibration": "wikitext2", "n_samples": n_samples}
            t0 = time.perf_counter()
            q = llmq.quantize(None, scheme, device="cpu", **kw)
            q.save(path)
            print(f"quantized {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        out[name] = path
    return out


def quality(path: Path | None, windows: int, limit: int, tasks: list[str]) -> dict:
    import torch

    from llmq.core import load
    from llmq.eval.perplexity import perplexity
    from llmq.eval.tasks import run_task
    from llmq.models import resolve_model

    folder = path or resolve_model(None).local_dir()
    model, tok = load(folder, device="cpu")
    t0 = time.perf_counter()
    with torch.inference_mode():
        ppl = perplexity(model, tok, "wikitext2", seqlen=1024, limit=windows, progress=False)
        acc = {t: run_task(model, tok, t, limit=limit, batch_size=16, progress=False)["acc"] for t in tasks}
    return {"ppl": ppl.value, "ppl_windows": ppl.windows, "tasks": acc, "eval_s": round(time.perf_counter() - t0, 1)}


def quality_table(result: dict) -> str:
    """Markdown: size, perplexity and task accuracy per variant, with changes vs fp32."""
    rows = result.get("variants", {})
    tasks = sorted({t for r in rows.values() for t in r.get("tasks", {})})
    head = ("| variant | size MB | static / per-token Linears | WikiText-2 ppl | Δppl | "
            + " | ".join(f"{t} (Δ pts)" for t in tasks) + " |")
    lines = [head, "|" + "---|" * (5 + len(tasks))]
    for name, r in rows.items():
        if "ppl" not in r:
            continue
        d = r.get("dtasks_pts", {})
        acc = " | ".join(f"{100 * r['tasks'][t]:.1f} ({d.get(t, 0):+.1f})" if t in r["tasks"] else "" for t in tasks)
        a = r.get("activations")
        split = f"{a['static_linears']} / {a['dynamic_linears']}" if a else ""
        lines.append(f"| {name} | {r.get('size_mb', '')} | {split} | {r['ppl']:.2f} | {r.get('dppl_pct', 0):+.2f}% | {acc} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/llmq-bench-int8")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--stages", default="size,quality,speed")
    ap.add_argument("--n-samples", type=int, default=16, help="calibration windows of 512 tokens")
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--samples", type=int, default=3)
    add_json_arg(ap)
    ap.add_argument("--note", help="conditions of this run (e.g. 'machine shared with 4 other jobs'), stored per stage")
    ap.add_argument("--redo", action="store_true", help="re-measure quality rows already in --json")
    args = ap.parse_args()
    os.environ.setdefault("LLMQ_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    stages = set(args.stages.split(","))
    names = [v for v in args.variants.split(",") if v]
    if stages - {"size", "quality", "speed"}:
        ap.error(f"unknown stage(s) {sorted(stages - {'size', 'quality', 'speed'})}: choose from size, quality, speed")
    unknown = [n for n in names if n not in ALL]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}: choose from {', '.join(ALL)}")
    work = Path(args.work)
    paths = build(work, names, args.n_samples, create=bool(stages & {"size", "quality"}))

    from llmq.models import folder_size, resolve_model

    out_path = Path(args.json)
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    result.setdefault("variants", {})
    rows = result["variants"]
    src = resolve_model(None).local_dir()
    everything = {"fp32": None, **paths}
    for name, path in everything.items():
        r = rows.setdefault(name, {})
        if "size" in stages:
            r["size_mb"] = round(folder_size(path or src) / 1e6, 1)
            a = json.loads((path / "llmq.json").read_text()).get("activations") if path else None
            if a:  # int8-static: how many Linears kept static activation scales
                r["activations"] = {"static_linears": a["static_linears"], "dynamic_linears": a["dynamic_linears"],
                                    "dynamic": sorted(a["dynamic"]), "smooth_alpha": a["smooth_alpha"]}
        if "quality" in stages and (args.redo or "ppl" not in r):
            r.update(quality(path, args.ppl_windows, args.limit, args.tasks.split(",")))
            print(name, json.dumps(r), flush=True)
            write_record(out_path, result, quiet=True)  # resumable
    if "speed" in stages:
        from llmq.benchmark import bench, format_table

        # fp32 eager first (every ratio's 1.0) and again last: its drift over the run is in the JSON
        specs = ["demo@eager"] + [str(p) for p in paths.values()] + ["demo@eager"]
        names = [*everything, "fp32 (again, last)"]
        brows = bench(specs, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                      batch_sizes=[int(b) for b in args.batch_sizes.split(",")], samples=args.samples)
        print(format_table(brows))
        i = 0
        for br in brows:  # rows come in spec order; the same spec twice (fp32) maps by position
            while specs[i] != br.model:
                i += 1
            rows.setdefault(names[i], {}).setdefault("speed", {})[f"batch{br.batch}"] = br.to_dict()
        result["speed_table"] = format_table(brows)
    fp = rows.get("fp32", {})
    if "speed" in stages:
        result.pop("speed_status", None)
    for r in rows.values():
        if "ppl" in r and "ppl" in fp:
            r["dppl_pct"] = round(100 * (r["ppl"] / fp["ppl"] - 1), 2)
            r["dtasks_pts"] = {t: round(100 * (a - fp["tasks"][t]), 1) for t, a in r["tasks"].items()}
    cmd = command_line()
    for st in stages:  # each stage keeps the command (and conditions) that produced it
        result.setdefault("commands", {})[st] = cmd
        if args.note:
            result.setdefault("notes", {})[st] = args.note
    result.update({
        "model": "SmolLM2-135M-Instruct (fp32, dequantized from the demo GGUF)",
        "note": "speed: fp32 eager = 1.0, int8 folders compiled (llmq.fastpath); ratios from one run",
    })
    write_record(out_path, result, quiet=True)
    print(quality_table(result))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
