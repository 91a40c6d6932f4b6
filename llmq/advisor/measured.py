"""Numbers measured in this repository that the advice quotes next to the rule of thumb.

Each block names the command that produced it; rerun the command and paste its JSON to update.
"""

from __future__ import annotations

#: ``python scripts/bench_cpu_speed.py --tokens 32`` (decode tokens/s, best of 2, one run, on a
#: 2-core machine shared with other jobs; fp32 re-measured alone afterwards: 3.03 tok/s).
#: torchao int8-dynamic runs eagerly here (no torch.compile), which is why it is slower than fp32.
CPU_SPEED: dict = {
    "command": "python scripts/bench_cpu_speed.py --tokens 32",
    "model": "SmolLM2-135M-Instruct",
    "machine": "2 shared CPU cores, torch 2.14 eager",
    "tokens_per_s": {"fp32": 2.78, "int8-dynamic": 0.52, "bnb-int8": 0.29, "bnb-nf4": 0.39},
}

#: SmolLM2-135M-Instruct, size written by llmq and perplexity change vs the fp32 original
SMOL_QUALITY: dict = {
    "command": "",
    "rows": {},
}
