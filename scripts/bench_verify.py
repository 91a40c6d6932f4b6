"""What ``llmq.verify`` measures for every CPU scheme, on the SmolLM2-135M demo (real) and on tiny
random models (Llama, Gemma-2/3), next to what garbage gives: the measurements the per-scheme KL
bounds (``Backend.verify_kld``, ``VERIFY_KLD``) are set from.

Each scheme is quantized and saved with ``verify=False`` into ``--work`` (kept: reruns reuse it),
then ``llmq.verify.verify`` compares the folder with the original exactly as ``save`` does, and its
cost is put next to the quantize + save time. Garbage rows: the original's KL to a uniform
distribution (what an output that lost its inputs gives), and the Gemma int8-embedding bug itself
(the tiny Gemma outputs loaded without ``llmq.backends.torchao.restore_buffers``).

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_verify.py                      # everything
    OMP_NUM_THREADS=1 python scripts/bench_verify.py --parts demo --schemes int8-dynamic --update
    OMP_NUM_THREADS=1 python scripts/bench_verify.py --parts run --update   # `llmq run` demo, with and without --no-verify

CPU seconds (process time) are reported besides wall seconds: the machine may be shared.
Writes a table to stdout and JSON to eval/bench_verify.json (``--json``); ``--update`` merges rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, machine, write_json, write_record  # noqa: E402
#: every scheme that runs on a CPU, with the options the demo measurement uses (calibrated ones on
#: the builtin text with fewer samples than their defaults, QAT with 10 steps: lower quality than the
#: defaults, so the measured KL errs high, the safe side for a bound)
CAL = {"calibration": "builtin", "group_size": 64, "n_samples": 16, "seqlen": 256}
QAT = {"steps": 5, "batch_size": 2, "seqlen": 128, "data": "builtin"}
DEMO_SCHEMES = {
    "fp16": {}, "bf16": {}, "int8-dynamic": {}, "bnb-int8": {}, "bnb-nf4": {}, "bnb-fp4": {},
    "gguf-q8_0": {}, "gguf-q6_k": {}, "gguf-q5_k_m": {}, "gguf-q4_k_m": {}, "gguf-q4_0": {},
    "int8-static": {"calibration": "builtin", "n_samples": 8, "seqlen": 256},
    "gptq-int8": CAL, "gptq-int4": CAL, "gptq-int3": CAL, "awq-int4": {**CAL, "n_samples": 8},
    "qat-int8": QAT, "qat-w8a8": QAT, "qat-int4": QAT, "qat-8da4w": QAT, "fp8": {},
}
TINY_CAL = {"calibration": "builtin", "n_samples": 8, "seqlen": 128}
TINY_SCHEMES = {"fp16": {}, "bf16": {}, "int8-dynamic": {}, "int8-static": TINY_CAL, "bnb-int8": {}, "bnb-nf4": {},
                "gptq-int4": {**TINY_CAL, "group_size": 64}}
#: llama.cpp's converter needs a tokenizer it knows: llmq.testing_gguf's models (SmolLM2's tokenizer)
GGUF_SCHEMES = {"gguf-q8_0": {}, "gguf-q4_k_m": {}, "gguf-q4_0": {}}
TINY_MODELS = {  # name -> (folder, "module:builder", kwargs, schemes)
    "tiny-llama (init 0.02, near-uniform)": ("llama-0.02", "testing:tiny_llama", {}, TINY_SCHEMES),
    "tiny-llama (init 0.1)": ("llama-0.1", "testing:tiny_llama", {"initializer_range": 0.1}, TINY_SCHEMES),
    "tiny-gemma3 (init 0.1)": ("gemma3-0.1", "testing:tiny_gemma", {"version": 3}, TINY_SCHEMES),
    "tiny-gemma2 (init 0.1)": ("gemma2-0.1", "testing:tiny_gemma", {"version": 2}, TINY_SCHEMES),
    "tiny-llama, SmolLM2 tokenizer": ("gguf-llama", "testing_gguf:tiny_model", {"arch": "llama"}, GGUF_SCHEMES),
    "tiny-gemma3, SmolLM2 tokenizer": ("gguf-gemma3", "testing_gguf:tiny_model", {"arch": "gemma3"}, GGUF_SCHEMES),
}


def cpu() -> float:
    return time.process_time()


def quantize_row(model: str | None, scheme: str, opts: dict, folder: Path, *, redo: bool) -> dict:
    """Quantize + save (no verification) into ``folder`` unless there; then verify it as save does."""
    import llmq
    from llmq.models import resolve_model
    from llmq.schemes import get_scheme
    from llmq.verify import verify

    row: dict = {"scheme": scheme, "options": opts}
    if redo and folder.exists():
        shutil.rmtree(folder)
    meta_file = folder / "llmq.json"
    if not meta_file.is_file():
        w, c = time.perf_counter(), cpu()
        qm = llmq.quantize(model, scheme, device="cpu", **opts)
        qm.save(folder, verify=False)
        row["run_wall_s"], row["run_cpu_s"] = round(time.perf_counter() - w, 1), round(cpu() - c, 1)
        write_json(folder.parent / f"{folder.name}.time.json",
                   {"run_wall_s": row["run_wall_s"], "run_cpu_s": row["run_cpu_s"]})
        del qm
    else:
        t = folder.parent / f"{folder.name}.time.json"
        row.update(json.loads(t.read_text()) if t.is_file() else {})
    src = resolve_model(model).local_dir()
    sch = get_scheme(scheme)
    w, c = time.perf_counter(), cpu()
    res = verify(src, folder, scheme=scheme, bound=sch.backend_cls().verify_bound(sch), device="cpu")
    row["verify_wall_s"], row["verify_cpu_s"] = round(time.perf_counter() - w, 1), round(cpu() - c, 1)
    row.update({k: res[k] for k in ("kld", "kld_p99", "top1", "tokens", "bound", "passed", "runtime",
                                    "reference_runtime", "text")})
    if row.get("run_cpu_s"):
        row["verify_cost_vs_run_cpu"] = round(row["verify_cpu_s"] / row["run_cpu_s"], 3)
    return row


def uniform_row(model: str | None, label: str) -> dict:
    """KL(original || uniform): an output whose logits lost every input (e.g. all-zero embeddings)."""
    import torch

    from llmq.eval.kld import ReferenceCache
    from llmq.models import resolve_model
    from llmq.verify import _logits, windows
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_model(model).local_dir()
    tok = AutoTokenizer.from_pretrained(src)
    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    wins, text = windows(tok)
    vocab = min(len(tok), m.config.vocab_size)
    cache = ReferenceCache(sum(map(len, wins)), vocab, mode="exact")
    for i, ids in enumerate(wins):
        cache.add(i, _logits(m, ids, vocab))
    for i, ids in enumerate(wins):
        cache.compare(i, torch.zeros(len(ids), vocab))
    r = cache.result(text)
    cache.close()
    return {"scheme": label, "kld": r.mean, "kld_p99": r.p99, "top1": r.same_top, "tokens": r.tokens,
            "log_vocab": math.log(vocab)}


def gemma_bug_rows(src: Path, work: Path, model_name: str) -> list[dict]:
    """The tiny Gemma's int8 outputs loaded as transformers 5.25 alone loads them (no
    ``restore_buffers``): what every int8 run on Gemma produced before the fix."""
    import llmq.backends.int8_static as static
    import llmq.backends.torchao as tao
    from llmq.verify import verify

    rows = []
    real = tao.restore_buffers
    for scheme in ("int8-dynamic", "int8-static"):
        folder = work / f"{scheme}"
        if not (folder / "llmq.json").is_file():
            continue
        tao.restore_buffers = static.restore_buffers = lambda model: []
        try:
            res = verify(src, folder, scheme=scheme)
        finally:
            tao.restore_buffers = static.restore_buffers = real
        rows.append({"model": model_name, "scheme": f"{scheme}, embed_scale not restored (the bug)",
                     **{k: res[k] for k in ("kld", "kld_p99", "top1", "tokens", "bound", "passed")}})
    return rows


def gguf_reference_gap(work: Path) -> dict:
    """The demo's original as an f32 GGUF (llama.cpp's converter, as the GGUF schemes convert) on
    llama.cpp against the same weights on transformers (float32): how far the two runtimes are
    apart before any quantization, i.e. whether the transformers original can stand for the
    llama.cpp one when a .gguf output is verified."""
    from llmq.backends.base import Backend
    from llmq.backends.gguf.quantizer import convert
    from llmq.backends.gguf.runtime import LlamaCppLM
    from llmq.eval.kld import ReferenceCache
    from llmq.models import resolve_model
    from llmq.verify import _logits, windows
    from transformers import AutoTokenizer

    src = resolve_model(None).local_dir()
    tok = AutoTokenizer.from_pretrained(src)
    wins, text = windows(tok)
    ref, runtime, _ = Backend.verify_reference(src, "cpu")
    vocab = min(len(tok), ref.config.vocab_size)
    cache = ReferenceCache(sum(map(len, wins)), vocab, mode="exact")
    for i, ids in enumerate(wins):
        cache.add(i, _logits(ref, ids, vocab))
    del ref
    f = work / "demo-f32.gguf"
    w, c = time.perf_counter(), cpu()
    if not f.is_file():
        convert(src, f, "f32")
    convert_s = (round(time.perf_counter() - w, 1), round(cpu() - c, 1))
    lm = LlamaCppLM(f, n_ctx=max(map(len, wins)))
    for i, ids in enumerate(wins):
        cache.compare(i, _logits(lm, ids, vocab))
    r = cache.result(text)
    cache.close()
    return {"model": "SmolLM2-135M-Instruct (demo)", "scheme": "runtime gap: f32 GGUF on llama.cpp vs transformers",
            "kld": r.mean, "kld_p99": r.p99, "top1": r.same_top, "tokens": r.tokens, "reference_runtime": runtime,
            "convert_wall_s": convert_s[0], "convert_cpu_s": convert_s[1]}


def run_overhead(work: Path) -> dict:
    """``python -m llmq run`` (the demo, int8-dynamic) with and without ``--no-verify``: process CPU time."""
    out = {}
    for label, extra in (("verify", []), ("no-verify", ["--no-verify"])):
        w = time.perf_counter()
        before = os.times()
        subprocess.run([sys.executable, "-m", "llmq", "run", "--device", "cpu", "-o", str(work / f"run-{label}"), "--overwrite", *extra],
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        after = os.times()
        out[label] = {"wall_s": round(time.perf_counter() - w, 1),
                      "cpu_s": round((after.children_user - before.children_user)
                                     + (after.children_system - before.children_system), 1)}
    out["verify_cost_cpu"] = round(out["verify"]["cpu_s"] / out["no-verify"]["cpu_s"] - 1, 3)
    out["command"] = "python -m llmq run --device cpu -o OUT --overwrite [--no-verify]"
    return out


def fmt(v, nd=4):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def table(rows: list[dict]) -> str:
    cols = ("model", "scheme", "kld", "kld_p99", "top1", "bound", "passed", "verify_cpu_s", "run_cpu_s",
            "verify_cost_vs_run_cpu")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="demo,tiny,garbage,gguf-ref,run",
                    help="demo, tiny, garbage, gguf-ref (llama.cpp vs transformers on the same weights), run "
                         "(`llmq run` with and without verification); comma-separated")
    ap.add_argument("--schemes", help="comma-separated subset (default: every CPU scheme)")
    ap.add_argument("--work", default="/tmp/llmq-bench-verify")
    add_json_arg(ap)
    ap.add_argument("--update", action="store_true", help="merge into the existing JSON (rows keyed by model+scheme)")
    ap.add_argument("--redo", action="store_true", help="quantize again even where --work has the folder")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    parts = set(args.parts.split(","))
    only = set(args.schemes.split(",")) if args.schemes else None
    out = Path(args.json)
    old = json.loads(out.read_text()) if args.update and out.is_file() else {}
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python " + " ".join(sys.argv)
    rows: list[dict] = []

    def save(overhead: dict | None = None, *, quiet: bool = False) -> dict:
        """Write the record (merged into the old one with --update): after every row, so a run cut
        short keeps what it measured."""
        from llmq.verify import SEQLEN, TEXT, WINDOWS

        keep = {(r.get("model"), r.get("scheme")): r for r in old.get("rows", [])}
        for r in rows:
            keep[(r.get("model"), r.get("scheme"))] = r
        data = {"protocol": f"llmq.verify: {TEXT} text, {WINDOWS} windows x {SEQLEN} tokens; KL(original || "
                            "output) mean per token (nats), p99, top-1 agreement; calibrated schemes/QAT with the "
                            "options shown", "rows": list(keep.values())}
        if overhead or old.get("run_overhead"):
            data["run_overhead"] = overhead or old["run_overhead"]
        return write_record(out, data, command=(old["command"] + " + " + command) if old.get("command") else command,
                            machine=machine(omp_num_threads=os.environ.get("OMP_NUM_THREADS")), quiet=quiet)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if "demo" in parts:
        for scheme, opts in DEMO_SCHEMES.items():
            if only and scheme not in only:
                continue
            print(f"demo {scheme} ...", flush=True)
            try:
                rows.append({"model": "SmolLM2-135M-Instruct (demo)",
                             **quantize_row(None, scheme, opts, work / "demo" / scheme, redo=args.redo)})
            except Exception as e:  # noqa: BLE001 - one scheme failing is a row, not the end
                rows.append({"model": "SmolLM2-135M-Instruct (demo)", "scheme": scheme, "error": f"{type(e).__name__}: {e}"})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            save(quiet=True)
    if "tiny" in parts:
        for name, (slug, builder, kw, schemes) in TINY_MODELS.items():
            folder = work / "tiny" / slug
            src = folder / "original"
            if not (src / "config.json").is_file():
                mod, fn = builder.split(":")
                getattr(importlib.import_module(f"llmq.{mod}"), fn)(src, **kw)
            for scheme, opts in schemes.items():
                if only and scheme not in only:
                    continue
                try:
                    rows.append({"model": name, **quantize_row(str(src), scheme, opts, folder / scheme, redo=args.redo)})
                except Exception as e:  # noqa: BLE001
                    rows.append({"model": name, "scheme": scheme, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                save(quiet=True)
            if builder == "testing:tiny_gemma" and "garbage" in parts:
                rows += gemma_bug_rows(src, folder, name)
                print(table(rows[-2:]), flush=True)
    if "garbage" in parts:
        rows.append({"model": "SmolLM2-135M-Instruct (demo)", **uniform_row(None, "garbage: uniform logits")})
        for name in ("tiny-llama (init 0.1)", "tiny-gemma3 (init 0.1)"):
            src = work / "tiny" / TINY_MODELS[name][0] / "original"
            if (src / "config.json").is_file():
                rows.append({"model": name, **uniform_row(str(src), "garbage: uniform logits")})
    if "gguf-ref" in parts:
        rows.append(gguf_reference_gap(work))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    overhead = run_overhead(work) if "run" in parts else None

    data = save(overhead)
    print(table(data["rows"]))
    if data.get("run_overhead"):
        print(json.dumps(data["run_overhead"]))


if __name__ == "__main__":
    main()
