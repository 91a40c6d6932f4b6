"""CPU speed of every llmq output vs fp32, measured with ``llmq bench``: the advisor's CPU table.

Why: "quantize to go faster" is not true of every scheme on CPU (bitsandbytes dequantizes per
matmul, torchao int8 needs its compiled fast path, llama.cpp runs GGUF), so ``llmq advise`` ranks
CPU candidates by what this measures instead of a hard-coded preference. It quantizes the offline
demo (SmolLM2-135M-Instruct) with each scheme into ``--work`` (a folder that already holds an llmq
output is reused), then runs ``llmq.bench`` on ``[demo, output]`` pairs: each scheme's ratio is to an
fp32 baseline measured right before it, in the same bench call, because this VM's fp32 speed drifts
by 20% between minutes. Every model runs as ``llmq bench`` runs it by default (torchao folders
compiled through ``llmq.fastpath``, GGUF on llama.cpp, the rest eager transformers); batch 1,
512-token WikiText-2 prompt, 128 new tokens, median of ``--samples``. Prints a table and writes
the JSON record (``--json``, default ``eval/bench_cpu_speed.json``); ``llmq/advisor/measured.json``
(the advisor's ``CPU_SPEED``) is derived from it by ``python scripts/update_measured.py``.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_cpu_speed.py --work /tmp/cpuspeed

Speed numbers need a quiet machine: pause other jobs while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, machine, write_record  # noqa: E402

SCHEMES = "bf16,int8-dynamic,int8-static,bnb-int8,bnb-nf4,gptq-int4,awq-int4,gguf-q8_0,gguf-q4_k_m"
#: options llmq's own benchmarks use for the demo (576-wide layers: AWQ and its CPU kernel need g | 576)
#: 32 calibration samples: speed does not depend on them, and the quality figures come from bench_quantize.py
OPTIONS = {"gptq-int4": {"group_size": 64, "n_samples": 32}, "awq-int4": {"group_size": 64, "n_samples": 32}}


def output_for(scheme: str, work: Path, create: bool = True) -> str:
    """The bench spec of ``scheme``'s output in ``work`` (its ``.gguf`` for a GGUF folder), quantizing
    the demo first when ``create`` and the folder holds no llmq output yet."""
    import llmq

    folder = work / scheme
    if create and not (folder / "llmq.json").is_file():
        t0 = time.perf_counter()
        qm = llmq.quantize(None, scheme, device="cpu", **OPTIONS.get(scheme, {}))
        qm.save(folder, overwrite=True)
        print(f"{scheme}: quantized and saved in {time.perf_counter() - t0:.0f} s", flush=True)
    ggufs = sorted(folder.glob("*.gguf"))
    return str(ggufs[0]) if ggufs else str(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default=SCHEMES)
    ap.add_argument("--work", default="/tmp/llmq-cpu-speed", help="where the quantized outputs are written / reused")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per bench child")
    ap.add_argument("--stages", default="quantize,bench",
                    help="quantize (slow, any machine state) and/or bench (needs a quiet machine)")
    ap.add_argument("--update", action="store_true",
                    help="keep the other schemes' rows already in --json (each row has its own fp32 baseline)")
    add_json_arg(ap)
    args = ap.parse_args()
    os.environ.setdefault("LLMQ_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    from llmq.benchmark import bench
    from llmq.errors import LlmqError

    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    out: dict = {
        "argv": sys.argv,
        "model": "SmolLM2-135M-Instruct (offline demo; fp32 = the original as transformers loads it)",
        "settings": {"batch": 1, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                     "samples": args.samples, "baseline": "fp32 eager, measured right before each scheme"},
        "options": {s: OPTIONS.get(s, {}) for s in schemes},
        "results": [], "failed": {},
    }

    if args.update and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        out["results"] = [r for r in old.get("results", []) if r["scheme"] not in schemes]
        out["failed"] = {k: v for k, v in old.get("failed", {}).items() if k not in schemes}
        out["argv"] = [*old.get("argv", []), "+", *sys.argv]

    def write(quiet: bool = True) -> None:  # machine: the bench children's thread count (--threads)
        write_record(args.json, out, machine=machine(threads=args.threads), quiet=quiet)

    stages = set(args.stages.split(","))
    specs: dict[str, str] = {}
    for scheme in schemes:
        try:
            specs[scheme] = output_for(scheme, work, create="quantize" in stages)
        except (LlmqError, RuntimeError, OSError) as e:
            out["failed"][scheme] = f"quantize: {type(e).__name__}: {e}"
            print(f"{scheme}: quantize FAILED {e}", flush=True)
    if "bench" not in stages:
        return 0
    for scheme, spec in specs.items():
        try:
            rows = bench(["demo", spec], batch_sizes=(1,), prompt_tokens=args.prompt_tokens,
                         new_tokens=args.new_tokens, samples=args.samples, threads=args.threads,
                         timeout=args.timeout)
        except (LlmqError, RuntimeError, OSError) as e:
            out["failed"][scheme] = f"{type(e).__name__}: {e}"
            print(f"{scheme}: FAILED {e}", flush=True)
            write()
            continue
        base, r = rows[0], rows[1]
        out["results"].append({
            "scheme": scheme, "mode": r.mode, "size_mb": round(r.size_mb, 1) if r.size_mb else None,
            "decode_tok_s": round(r.decode_tok_s, 2), "prefill_tok_s": round(r.prefill_tok_s, 1),
            "fp32_decode_tok_s": round(base.decode_tok_s, 2), "fp32_prefill_tok_s": round(base.prefill_tok_s, 1),
            "decode_x": round(r.decode_tok_s / base.decode_tok_s, 3),
            "prefill_x": round(r.prefill_tok_s / base.prefill_tok_s, 3),
            "first_call_s": round(r.first_call_s, 1), "peak_rss_mb": round(r.peak_rss_mb),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        x = out["results"][-1]
        print(f"{scheme:12s} {x['mode']:28.28s} decode {x['decode_x']:.2f}x ({x['decode_tok_s']} vs "
              f"{x['fp32_decode_tok_s']} tok/s)  prefill {x['prefill_x']:.2f}x", flush=True)
        write()

    order = {s: i for i, s in enumerate(SCHEMES.split(","))}
    out["results"].sort(key=lambda x: order.get(x["scheme"], 99))  # --update appends: keep the table's order
    print("\n| scheme | runs as | size MB | decode vs fp32 | prefill vs fp32 | decode tok/s (fp32) |\n|---|---|---:|---:|---:|---:|")
    for x in out["results"]:
        print(f"| {x['scheme']} | {x['mode']} | {x['size_mb']} | {x['decode_x']:.2f}x | {x['prefill_x']:.2f}x | "
              f"{x['decode_tok_s']} ({x['fp32_decode_tok_s']}) |")
    for s, e in out["failed"].items():
        print(f"| {s} | failed: {e} |")
    write(quiet=False)
    print("refresh the advisor's copy (llmq/advisor/measured.json): python scripts/update_measured.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
