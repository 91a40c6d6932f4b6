"""Write random-weight Llama models of real shapes (7B, 3B, 1B: ``llmq.testing.SCALE_SHAPES``) for
the scale benchmark (``scripts/bench_scale.py``), in bf16 safetensors shards of <= 2 GB with the demo
model's tokenizer, using little RAM (one tensor generated at a time, one shard held):

    python scripts/make_scale_models.py --out /tmp/scale 7B 3B 1B

The 7B folder is 13.8 GB (49,152-token vocab: the demo's). ``7B-2L`` is the 7B's widths with two
layers (1.6 GB): the end of a run (packing, saving) at 7B widths for a scheme too slow to run all 32."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from llmq.testing import SCALE_SHAPES, random_llama_streamed

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sizes", nargs="+", choices=sorted(SCALE_SHAPES))
    p.add_argument("--out", default="/tmp/llmq-scale", help="parent folder (one subfolder per size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    a = p.parse_args(argv)
    from transformers import AutoTokenizer

    from llmq.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(None).local_dir())
    for s in a.sizes:
        out = Path(a.out) / f"llama-{s.lower()}-random"
        t = time.perf_counter()
        random_llama_streamed(out, tok, **SCALE_SHAPES[s], dtype=a.dtype, seed=a.seed)
        gb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e9
        print(f"{s}: {out} ({gb:.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
