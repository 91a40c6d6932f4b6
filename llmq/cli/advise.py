"""``llmq advise`` and ``llmq estimate``: answers before any weight is downloaded."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmq.errors import ConfigError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Hub id, local folder, .gguf file, or a parameter count such as 7e9 or 70B "
                                   "(default: the offline demo model)")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_model(text: str | None) -> Any:
    """``7e9``, ``70B``, ``135M`` -> a parameter count; an existing path or anything else is a model."""
    import re
    from pathlib import Path

    if text is None:
        return None
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)([kmbt]?)", t, re.IGNORECASE)
    if not m or Path(t).expanduser().exists():
        return t
    n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    if not 1 <= n < 1e16:  # 1e400 reads as inf; no model has 10 quadrillion parameters
        raise ConfigError(f"--model {t}: a parameter count must be between 1 and 1e16, such as 7e9 or 70B.")
    return int(n)


def add_advise(sub: Any) -> None:
    p = sub.add_parser("advise", help="which scheme for this model, hardware and tolerance (no download)",
                       description="Ranks every scheme by the hardware decision tree and the model-size rule of "
                                   "thumb, with estimated size and memory at the context, expected quality cost "
                                   "and the exact `llmq run` command. Hardware is detected unless given.")
    _model_args(p)
    p.add_argument("--device", help="cpu or cuda (default: detected)")
    p.add_argument("--gpu-memory", type=float, metavar="GB", help="GPU memory the model may use (default: free now)")
    p.add_argument("--ram", type=float, metavar="GB", help="RAM the model may use (default: available now)")
    p.add_argument("--context", type=int, default=2048, help="tokens of context to budget the KV cache for")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--tolerance", help="acceptable quality loss, e.g. 3%% or 0.03")
    p.add_argument("--serve", metavar="ENGINE", help="rank by what this serving engine runs fast (vllm), with commands "
                                                    "that write its format")
    p.add_argument("--gpu-arch", help="with --serve: the GPU generation (turing, ampere, ada, hopper, blackwell; "
                                      "default: the detected GPU's)")
    p.add_argument("--markdown", action="store_true", help="print the advice as a markdown table")
    p.add_argument("--markdown-table", action="store_true",
                   help="print the 'Which scheme?' section of docs/advisor.md (rule of thumb + measured figures) and exit")
    p.set_defaults(func=cmd_advise)


def cmd_advise(args: argparse.Namespace) -> int:
    if args.markdown_table:
        from llmq.advisor.report import which_scheme_markdown

        print(which_scheme_markdown(), end="")
        return 0
    from llmq.advisor.advice import advise

    adv = advise(parse_model(args.model), device=args.device, gpu_memory_gb=args.gpu_memory, ram_gb=args.ram,
                 context=args.context, batch_size=args.batch_size, tolerance=args.tolerance,
                 revision=args.revision, trust_remote_code=args.trust_remote_code, serve=args.serve,
                 gpu_arch=args.gpu_arch)
    if args.json:
        print(json.dumps(adv.to_dict(), indent=2, default=str))
    elif args.markdown:
        print(adv.to_markdown(), end="")
    else:
        from llmq.fmt import console, term_width

        console(max(160, term_width())).print(adv)
    return 0


def add_estimate(sub: Any) -> None:
    p = sub.add_parser("estimate", help="size on disk per scheme, from the config (no download)",
                       description="fp32/fp16/int8/nf4/int4 sizes for every llmq scheme: bits per weight with "
                                   "group scales, zeros and double-quant overhead; embeddings and lm_head at "
                                   "their real precision.")
    _model_args(p)
    p.add_argument("--group-size", type=int, help="group size for GPTQ/AWQ (default: each scheme's default)")
    p.add_argument("--context", type=int, default=2048, help="tokens of context for the memory column")
    p.add_argument("--device", default="cuda", help="device the model is quantized and run on (default cuda; AWQ on CPU is saved in fp32)")
    p.set_defaults(func=cmd_estimate)


def estimate_rows(prof: Any, group_size: int | None = None, context: int = 2048, device: str = "cuda") -> list[dict]:
    from llmq.advisor.estimate import estimate_scheme, memory, original
    from llmq.config import CalibratedConfig
    from llmq.schemes import SCHEMES, get_scheme

    base = original(prof)
    rows = []
    for s in ["fp32", *SCHEMES]:
        if s == "fp32":
            e = base
        else:
            grouped = issubclass(get_scheme(s).config_cls, CalibratedConfig) and get_scheme(s).config().group_size != -1
            ov = {"group_size": group_size} if group_size and grouped else {}  # not per-channel int8-static
            e = estimate_scheme(prof, s, device=device, **ov)
        m = memory(prof, e, context=context, device=device)
        rows.append({"scheme": e.scheme, "format": e.label, "bits_per_weight": e.bits_per_weight,
                     "bits_per_param": 8 * e.bytes / prof.parameters, "size_bytes": e.bytes,
                     "vs_fp32": base.bytes / e.bytes, "kept_dtype": e.kept_dtype,
                     "quantized_params": e.quantized_params, "memory_bytes": m.total, "breakdown": e.breakdown})
    return rows


def cmd_estimate(args: argparse.Namespace) -> int:
    from llmq.fmt import gb, gib
    from llmq.advisor.params import human_count, profile

    if args.context < 1:
        raise ConfigError(f"--context must be positive, got {args.context}.")
    prof = profile(parse_model(args.model), revision=args.revision, trust_remote_code=args.trust_remote_code)
    rows = estimate_rows(prof, args.group_size, args.context, "cuda" if args.device.startswith("cuda") else "cpu")
    if args.json:
        print(json.dumps({"model": prof.to_dict(), "context": args.context, "rows": rows}, indent=2, default=str))
        return 0
    from rich.table import Table

    from llmq.fmt import console

    t = Table(title=f"llmq estimate: {prof.name} ({human_count(prof.parameters)} parameters, {prof.source_text})")
    for col in ("scheme", "format", "bits/weight (quantized layers)", "bits/param (all)", "size", "vs fp32",
                "kept at", f"memory @ {args.context} tokens"):
        t.add_column(col)
    for r in rows:
        bpw = f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] else "-"
        t.add_row(r["scheme"], r["format"], bpw, f"{r['bits_per_param']:.2f}", gb(r["size_bytes"]),
                  f"{r['vs_fp32']:.2f}x", r["kept_dtype"], gib(r["memory_bytes"]))
    con = console(160)
    con.print(t)
    con.print(f"{prof.parameters:,} parameters ({prof.source_text}); layout: {prof.layout_source}; "
              f"{len(prof.linears)} Linear layers ({prof.linear_params:,} weights), embeddings {prof.embedding_params:,}"
              f"{' (tied lm_head, stored once)' if prof.tied else f', lm_head {prof.lm_head_params:,}'}, "
              f"other {prof.other_params:,}. Embeddings and lm_head are never quantized.", highlight=False)
    for n in prof.notes:
        con.print(f"note: {n}", highlight=False)
    return 0
