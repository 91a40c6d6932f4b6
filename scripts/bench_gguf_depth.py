"""Q8_0 decode at a context depth, interleaved rounds: ``llmq bench`` of the GGUF file, the fp32
transformers model (``demo@eager``) and ``llama-bench -d DEPTH -n 128`` in turn, so every round has
all three under the same machine conditions (this VM moves ±20% between minutes).

    python scripts/bench_gguf_depth.py --gguf OUT/model-Q8_0.gguf --llama-bench <patched build>/bin/llama-bench
    python scripts/bench_gguf_depth.py ... --depth 0 --json eval/bench_gguf_depth0.json

``--depth 0`` is ``llama-bench``'s default ``tg128`` (empty context); llmq bench then decodes after a
16-token prompt (its smallest realistic prompt). ``llama-bench / fp32`` is the ceiling for llmq's
Q8_0 ratio: it is what llama.cpp's own tool reaches against the same fp32 run.

Prints one line per round and writes the JSON (default ``eval/bench_gguf_depth.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, machine, write_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-bench", required=True, help="llama-bench binary (same llama.cpp as llama-cpp-python)")
    ap.add_argument("--fp32", default="demo@eager")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=512, help="context before the 128 decoded tokens (default 512)")
    add_json_arg(ap)
    a = ap.parse_args()
    for flag, path in (("--gguf", a.gguf), ("--llama-bench", a.llama_bench)):
        if not Path(path).is_file():
            ap.error(f"{flag} {path}: no such file")
    from llmq.benchmark import bench

    def llmq_decode(spec: str) -> float:
        rows = bench([spec], prompt_tokens=max(a.depth, 16), new_tokens=128, batch_sizes=(1,), samples=2, threads=a.threads)
        return rows[0].decode_tok_s

    rounds = []
    for i in range(a.rounds):
        r = {"llmq bench q8_0": llmq_decode(a.gguf), "llmq bench fp32": llmq_decode(a.fp32)}
        out = subprocess.run([a.llama_bench, "-m", a.gguf, "-t", str(a.threads), "-fa", "0", "-p", "0", "-n", "128",
                              "-d", str(a.depth), "-r", "2", "-o", "json"], capture_output=True, text=True, check=True).stdout
        lb = f"llama-bench d{a.depth} tg128"
        r[lb] = json.loads(out)[0]["avg_ts"]
        r["q8_0 / llama-bench"] = r["llmq bench q8_0"] / r[lb]
        r["q8_0 / fp32"] = r["llmq bench q8_0"] / r["llmq bench fp32"]
        r["llama-bench / fp32"] = r[lb] / r["llmq bench fp32"]
        rounds.append(r)
        print(i, " | ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    summary = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print("median", " | ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    write_record(a.json, {"protocol": f"{max(a.depth, 16)}-token prompt (llama-bench: -d {a.depth}) "
                                      "then 128 greedy tokens, batch 1, "
                                      f"{a.threads} threads, flash attention off; llmq bench: one "
                                      "child process per model, mean of 2 after a warm-up",
                          "rounds": rounds, "median": summary}, machine=machine(threads=a.threads))


if __name__ == "__main__":
    main()
