"""``python -m llmq qat``: quantization-aware fine-tuning from the command line (``llmq.pipeline.qat``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_qat(sub: Any) -> None:
    from llmq.pipeline.qat import ALIASES

    p = sub.add_parser("qat", help="fine-tune with fake quantization (torchao QAT), then save a quantized model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="Hub id, model folder or .gguf (default: the offline demo)")
    p.add_argument("--scheme", default="qat-int4", help="qat-int4, qat-8da4w, qat-w8a8, qat-int8 (or the PTQ name it mirrors: "
                   + ", ".join(f"{k} -> {v}" for k, v in ALIASES.items()) + ")")
    p.add_argument("--data", default="wikitext2", help="wikitext2 (train text) or a .txt/.jsonl/.parquet file")
    p.add_argument("--objective", default="distill", choices=["distill", "lm"],
                   help="distill: match the original model's outputs (recovers rounding loss); lm: cross-entropy on --data")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between resumable checkpoints")
    p.add_argument("--max-ppl-increase", default=None,
                   help="stop early once the fake-quantized model's held-out perplexity is within this of the original (e.g. 5%%)")
    p.add_argument("--eval-every", type=int, default=25, help="steps between held-out checks for --max-ppl-increase")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint next to -o")
    p.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: .<output>.qat-checkpoint)")
    p.add_argument("--device", default=None)
    p.add_argument("--fp32-twin", action="store_true",
                   help="train without fake quantization (the fair reference for --objective lm)")
    p.add_argument("--group-size", type=int, default=None, help="override the scheme's group size (-1: per channel)")
    p.add_argument("--keep-embeddings", dest="quantize_embeddings", action="store_false",
                   help="torchao exports: keep the embedding and lm_head fp32 (default: int8 per row, fake-quantized in training)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier llmq output (a folder with llmq.json); other folders are never replaced")
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> int:
    from llmq.pipeline.qat import qat

    res = qat(a.model, a.scheme, data=a.data, steps=a.steps, lr=a.lr, seed=a.seed, output=a.output,
              overwrite=a.overwrite, resume=a.resume, checkpoint_dir=a.checkpoint_dir, batch_size=a.batch_size,
              seqlen=a.seqlen, warmup_steps=a.warmup_steps, checkpoint_every=a.checkpoint_every,
              max_ppl_increase=a.max_ppl_increase, eval_every=a.eval_every, device=a.device,
              fake_quant=not a.fp32_twin, quantize_embeddings=a.quantize_embeddings, objective=a.objective,
              **({"group_size": a.group_size} if a.group_size is not None else {}))
    t = res.backend.training
    print(json.dumps({"saved_to": str(res.saved_to), "scheme": res.meta.get("scheme"),
                      "steps_done": t["steps_done"], "early_stopped": t["early_stopped"],
                      "loss_first": t["loss_first"], "loss_last_10_mean": t["loss_last_10_mean"],
                      "tokens_per_s": t["tokens_per_s"], "wall_time_s": t["wall_time_s"]}, indent=2))
    return 0
