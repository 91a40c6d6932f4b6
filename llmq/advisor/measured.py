"""Numbers measured in this repository that the advice quotes next to the rule of thumb.

Each block names the command that produced it; rerun the command and paste its JSON to update.
"""

from __future__ import annotations

#: ``eval/bench_cpu_speed.json``: ``llmq bench`` of each llmq output of the demo against fp32 transformers
#: measured right before it in the same bench call (batch 1, 512-token WikiText-2 prompt, 128 new tokens,
#: median of 2): ratios, each to its own fp32 baseline, on a quiet 2-core VM. Each output runs as
#: ``llmq bench`` runs it by default (``mode``): torchao folders compiled through ``llmq.fastpath``, GGUF
#: on llama.cpp, the rest eager. The advisor ranks CPU candidates by ``decode_x``. On other CPUs the
#: ratios differ (AMX/bf16 above all): rerun the command there.
CPU_SPEED: dict = {
    "command": "LLMQ_DATA_DIR=../shared/data python scripts/bench_cpu_speed.py --work DIR",
    "model": "SmolLM2-135M-Instruct",
    "machine": "Intel(R) Xeon(R) Processor (avx512_bf16, amx_bf16, amx_int8), 2 threads, torch 2.14.1+cu130",
    "rows": {
        "bf16": {"decode_x": 0.943, "prefill_x": 2.159, "mode": "eager"},
        "int8-dynamic": {"decode_x": 2.26, "prefill_x": 1.79, "mode": "compiled"},
        "int8-static": {"decode_x": 3.007, "prefill_x": 2.173, "mode": "compiled"},
        "bnb-int8": {"decode_x": 0.548, "prefill_x": 0.834, "mode": "eager"},
        "bnb-nf4": {"decode_x": 0.802, "prefill_x": 0.57, "mode": "eager"},
        "gptq-int4": {"decode_x": 1.551, "prefill_x": 1.503, "mode": "eager"},
        "awq-int4": {"decode_x": 1.45, "prefill_x": 1.784, "mode": "eager"},
        "gguf-q8_0": {"decode_x": 4.766, "prefill_x": 1.203, "mode": "llama.cpp (2 threads)"},
        "gguf-q4_k_m": {"decode_x": 3.45, "prefill_x": 0.394, "mode": "llama.cpp (2 threads)"},
    },
}

#: SmolLM2-135M-Instruct (the offline demo, fp32 dequantized from its GGUF): size written by llmq and
#: perplexity change vs that fp32 original, from ``eval/bench_quantize.json`` (one run, 2-core CPU).
#: GPTQ/AWQ: group size 64, 64 x 512 calibration tokens from WikiText-2 valid; the naive RTN int4 g64
#: reference scored +33.1% in the same run.
SMOL_QUALITY: dict = {
    "command": "LLMQ_DATA_DIR=../shared/data python scripts/bench_quantize.py --n-samples 64",
    "refreshed": "awq-int4, int8-dynamic and int8-static by later runs with `--schemes ... --update` (argv in the JSON)",
    "params": 134_515_008,  # llmq.json's parameter count for this model
    "protocol": "WikiText-2 test, seqlen 1024, first 16 windows (16,368 tokens), fp32 activations; original ppl 22.77",
    "rows": {
        "fp16": {"size_bytes": 269060280, "ppl_change": 0.0},
        "bf16": {"size_bytes": 269060552, "ppl_change": -0.0001},
        "int8-dynamic": {"size_bytes": 135846920, "ppl_change": 0.0351},
        "int8-static": {"size_bytes": 136306572, "ppl_change": 0.0125},
        "bnb-int8": {"size_bytes": 163557570, "ppl_change": 0.0199},
        "gptq-int8": {"size_bytes": 168535400, "ppl_change": 0.0001},
        "bnb-nf4": {"size_bytes": 111879761, "ppl_change": 0.2808},
        "bnb-fp4": {"size_bytes": 111879761, "ppl_change": 0.4623},
        "gptq-int4": {"size_bytes": 114620920, "ppl_change": 0.2705},
        "awq-int4": {"size_bytes": 113999880, "ppl_change": 0.1624},
        "gptq-int3": {"size_bytes": 101142128, "ppl_change": 1.4108},
    },
}


#: ``eval/gpu/bench.json`` (``python3 scripts/bench_gpu.py`` on one NVIDIA H100 80GB HBM3, torch 2.11.0+cu130):
#: ``llmq bench`` of a random-weight Llama with TinyLlama-1.1B's shape quantized by every scheme that ran
#: there, eager transformers ``generate``, 512-token prompt, 128 new tokens, ratios to bf16 at the same
#: batch size (one run). At batch 1 a 1B model is bound by ``generate``'s Python overhead, not the GPU;
#: quantization there buys memory, not speed. Schemes missing from ``rows`` did not finish (``failed``).
GPU_SPEED: dict = {
    "command": "python3 scripts/bench_gpu.py --out eval/gpu/bench.json",
    "model": "random Llama, TinyLlama-1.1B shape (1.10B parameters), bf16 source",
    "machine": "NVIDIA H100 80GB HBM3, eager transformers 5.24.0",
    "rows": {"bf16": {"1": {"decode_x": 1.0, "prefill_x": 1.0, "peak_gpu_mb": 2271, "decode_tok_s": 64.3}, "8": {"decode_x": 1.0, "prefill_x": 1.0, "peak_gpu_mb": 2533, "decode_tok_s": 454.9}}, "fp16": {"1": {"decode_x": 0.637, "prefill_x": 0.756, "peak_gpu_mb": 2271, "decode_tok_s": 41.0}, "8": {"decode_x": 0.91, "prefill_x": 0.913, "peak_gpu_mb": 2533, "decode_tok_s": 413.9}}, "bnb-nf4": {"1": {"decode_x": 0.743, "prefill_x": 0.685, "peak_gpu_mb": 852, "decode_tok_s": 47.8}, "8": {"decode_x": 0.47, "prefill_x": 0.632, "peak_gpu_mb": 1096, "decode_tok_s": 213.7}}, "bnb-int8": {"1": {"decode_x": 0.262, "prefill_x": 0.294, "peak_gpu_mb": 1312, "decode_tok_s": 16.8}}},
    "failed": {"int8-dynamic": "bench of /tmp/bench_gpu_1zzmzjfw/int8-dynamic@eager ran past 75 s (0 of 2 batch sizes done", "bnb-int8": "bench of /tmp/bench_gpu_1zzmzjfw/bnb-int8@eager ran past 75 s (1 of 2 batch sizes done).", "int8-static": "bench of /tmp/bench_gpu_1zzmzjfw/int8-static@eager ran past 75 s (0 of 2 batch sizes done)", "bnb-fp4": ""},
}
