"""torchao's CPU int8 GEMM with and without llmq's exact fp32 path (``llmq.backends.torchao_patches``).

Per-call time of ``torch._int_mm`` (what torchao calls; a reference loop on CPUs without AVX512-VNNI
or AMX) and of ``exact_int_mm`` (fp32 GEMMs over K-chunks of 1024, bit-identical) for the demo's and
Llama-2-7B's Linear shapes at 1 to 512 rows, each checked equal; then one 512-token perplexity
window of the demo's int8-dynamic output without and with the patch. One run; compare within it.

    python scripts/bench_cpu_int_mm.py      # table + eval/bench_cpu_int_mm.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

SHAPES = [(576, 1536), (1536, 576), (4096, 4096), (11008, 4096)]  # (K, N): demo up/down, 7B q/down
ROWS = (1, 4, 8, 16, 64, 512)


def per_call_ms(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def window_seconds(folder: Path, patched: bool) -> tuple[float, float]:
    import torch

    import llmq
    import llmq.backends.torchao_patches as tp
    from llmq.eval.perplexity import perplexity

    model, tok = llmq.load(folder, device="cpu", dtype=torch.float32)
    if not patched:  # llmq.load applied it: put torchao's own function back for the reference run
        tp.unpatch()
    t = time.perf_counter()
    ppl = perplexity(model, tok, seqlen=512, limit=1, progress=False).value
    return time.perf_counter() - t, ppl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-model", action="store_true", help="only the GEMMs, not the demo's perplexity window")
    add_json_arg(ap)
    a = ap.parse_args()
    import torch

    from llmq.backends.torchao_patches import exact_int_mm, needed
    from llmq.hardware import cpu_name

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    rows = []
    for k, n in SHAPES:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8).t()
        for m in ROWS:
            x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
            calls = max(1, int(2e8 // (m * k * n)))
            assert torch.equal(torch._int_mm(x, w), exact_int_mm(x, w)), (m, k, n)
            ref, ours = per_call_ms(lambda: torch._int_mm(x, w), calls), per_call_ms(lambda: exact_int_mm(x, w), calls)
            rows.append({"M": m, "K": k, "N": n, "_int_mm ms": round(ref, 3), "exact fp32 ms": round(ours, 3),
                         "speedup": round(ref / ours, 2), "equal": True})
            print(f"M={m:4d} K={k:5d} N={n:5d}  _int_mm {ref:9.3f} ms  exact fp32 {ours:8.3f} ms  x{ref / ours:6.2f}",
                  flush=True)
    out = {"threads": a.threads, "torch": torch.__version__, "cpu": cpu_name(), "patch_applies_here": needed(),
           "gemms": rows}
    if not a.skip_model:
        import llmq

        with tempfile.TemporaryDirectory() as tmp:
            folder = llmq.quantize(None, "int8-dynamic", device="cpu").save(Path(tmp) / "o", verify=False)
            ref_s, ref_ppl = window_seconds(folder, patched=False)
            ours_s, ours_ppl = window_seconds(folder, patched=True)
        out["demo_int8_dynamic_window"] = {"tokens": 512, "torchao s": round(ref_s, 2), "patched s": round(ours_s, 2),
                                           "speedup": round(ref_s / ours_s, 2), "ppl torchao": ref_ppl,
                                           "ppl patched": ours_ppl}
        print(f"demo int8-dynamic, one 512-token window: {ref_s:.2f} s -> {ours_s:.2f} s "
              f"(x{ref_s / ours_s:.1f}); ppl {ref_ppl:.6f} vs {ours_ppl:.6f}")
    write_record(a.json, out)


if __name__ == "__main__":
    main()
