"""``llmq.advise``: which scheme for this model, on this hardware, at this tolerance, with numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmq.advisor import rules
from llmq.advisor.estimate import MemoryEstimate, estimate_scheme, memory, original
from llmq.sizing import SizeEstimate
from llmq.sizing import ModelProfile
from llmq.advisor.params import human_count, profile as make_profile
from llmq.errors import ConfigError, LlmqError
from llmq.fmt import gb, gib
from llmq.hardware import GB, Hardware, detect

STATUS_ORDER = {"recommended": 0, "ok": 1, "warn": 2, "avoid": 3, "exceeds tolerance": 4, "does not fit": 5,
                "unsupported": 6}


@dataclass
class Candidate:
    scheme: str
    label: str
    role: str
    size: SizeEstimate
    memory: MemoryEstimate
    fits: bool
    loss: tuple[float, float] | None
    loss_source: str
    status: str = "ok"
    reasons: list[str] = field(default_factory=list)
    command: str = ""
    installed: bool = True
    rank: int = 0
    quantize_cost: Any = None  # llmq.cost.Projection of quantizing on this CPU, when measured

    @property
    def loss_text(self) -> str:
        if self.loss is None:
            return "unknown"
        lo, hi = self.loss
        if hi <= 0.1:
            return "~0%"
        return f"{lo:g}-{hi:g}%"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "scheme": self.scheme, "format": self.label, "status": self.status,
            "role": self.role, "size_bytes": self.size.bytes, "bits_per_weight": self.size.bits_per_weight,
            "memory_bytes": self.memory.total, "memory": self.memory.to_dict(), "fits": self.fits,
            "expected_loss_pct": list(self.loss) if self.loss else None, "loss_source": self.loss_source,
            "reasons": self.reasons, "command": self.command, "installed": self.installed,
            "quantize_ram_gib": round(self.quantize_cost.ram_gib, 2) if self.quantize_cost else None,
            "quantize_wall_s": round(self.quantize_cost.wall_s) if self.quantize_cost else None,
        }


@dataclass
class Advice:
    profile: ModelProfile
    hardware: Hardware
    context: int
    batch_size: int
    tolerance: float | None  # fraction (0.03 = 3%)
    situation: str
    band: rules.SizeBand
    candidates: list[Candidate]
    fp32_bytes: int
    notes: list[str] = field(default_factory=list)
    serve: dict[str, Any] | None = None  # {"engine": "vllm", "gpu_arch": ...} with --serve

    @property
    def recommended(self) -> Candidate | None:
        return next((c for c in self.candidates if c.status == "recommended"), None)

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "model": self.profile.to_dict(),
            "hardware": self.hardware.to_dict(),
            "context": self.context, "batch_size": self.batch_size,
            "tolerance": self.tolerance,
            "situation": self.situation,
            "size_band": {"label": self.band.label, "rule": self.band.verdict,
                          "four_bit_loss_pct": list(self.band.four_bit_loss), "source": rules.RULE_SOURCE},
            "decision_tree": rules.TREE_TEXT,
            "recommended": rec.scheme if rec else None,
            "fp32_bytes": self.fp32_bytes,
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": self.notes,
            "serve": self.serve,
        }

    # -- rendering ------------------------------------------------------------------------------
    def headline(self) -> str:
        p = self.profile
        return (f"{p.name}: {p.parameters:,} parameters ({human_count(p.parameters)}; counted from "
                f"{p.source_text}), size band {self.band.label}: {self.band.verdict}.")

    def to_markdown(self) -> str:
        lines = [f"**{self.headline()}**", "", f"Hardware: {self.hardware.describe()}. Context {self.context} tokens, "
                 f"batch {self.batch_size}" + (f", tolerance {self.tolerance * 100:g}%." if self.tolerance else "."),
                 "", "| # | scheme | status | size | memory at context | expected loss | why | command |",
                 "|---|---|---|---|---|---|---|---|"]
        for c in self.candidates:
            lines.append(f"| {c.rank} | {c.scheme} | {c.status} | {gb(c.size.bytes)} | {gib(c.memory.total)} | "
                         f"{c.loss_text} | {'; '.join(c.reasons)} | `{c.command}` |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(title=f"llmq advise: {self.profile.name}", show_lines=True)
        for col in ("#", "scheme", "status", "size", "memory @ctx", "expected loss", "why", "command"):
            t.add_column(col, overflow="fold")
        style = {"recommended": "bold green", "ok": "", "warn": "yellow", "avoid": "red",
                 "exceeds tolerance": "red", "does not fit": "dim", "unsupported": "dim"}
        for c in self.candidates:
            t.add_row(str(c.rank), c.scheme, c.status, gb(c.size.bytes), gib(c.memory.total), c.loss_text,
                      "\n".join(c.reasons), c.command, style=style.get(c.status, ""))
        parts = [Text(self.headline()),
                 Text(f"Hardware: {self.hardware.describe()}; context {self.context}, batch {self.batch_size}"
                      + (f", tolerance {self.tolerance * 100:g}%" if self.tolerance else "")), t]
        rec = self.recommended
        parts.append(Text(f"Recommended: {rec.scheme} ({rec.role}). Verify with: {rec.command} --eval"
                          if rec else "No recommendation: no usable scheme fits (see each status above).", style="bold"))
        parts += [Text(f"- {n}") for n in self.notes]
        return Group(*parts)


def _installed(scheme: str) -> tuple[bool, str | None]:
    from llmq.schemes import get_scheme

    b = get_scheme(scheme).backend_cls()
    return (not b.missing_packages(), b.extra)


def cpu_speed_ratios(scheme: str) -> tuple[float | None, float | None]:
    """(decode, prefill) speed of ``scheme`` relative to fp32 in our CPU measurement; None where not measured."""
    if scheme == "fp32":
        return 1.0, 1.0
    r = (rules.MEASURED_CPU_SPEED.get("rows") or {}).get(scheme)
    return (r.get("decode_x"), r.get("prefill_x")) if r else (None, None)


def measured_cpu_note(scheme: str) -> str | None:
    """Our measured CPU speed of ``scheme`` relative to fp32 (decode and prefill), or None."""
    decode, prefill = cpu_speed_ratios(scheme)
    if decode is None or scheme == "fp32":
        return None
    text = f"measured {decode:.2f}x fp32 decode speed" + (f", {prefill:.2f}x prefill" if prefill is not None else "")
    return text + f" on CPU ({rules.MEASURED_CPU_SPEED['model']}, `llmq bench`)"


def cpu_speed_verdict(scheme: str) -> str | None:
    """'faster' / 'slower' / 'mixed' than fp32 on our CPU measurement (decode and prefill together)."""
    ratios = [r for r in cpu_speed_ratios(scheme) if r is not None]
    if not ratios:
        return None
    return "faster" if min(ratios) > 1 else "slower" if max(ratios) < 1 else "mixed"


def cpu_order(tree_order: list[str]) -> list[str]:
    """CPU preference: fastest measured decode first (``llmq bench`` vs fp32, measured.CPU_SPEED),
    then the schemes we did not measure in the decision tree's order. Measured, not assumed (issue
    #10: which runtime wins on a CPU is a measurement, not a preference)."""
    measured = [s for s in tree_order if cpu_speed_ratios(s)[0] is not None]
    measured.sort(key=lambda s: -(cpu_speed_ratios(s)[0] or 0))
    return measured + [s for s in tree_order if s not in measured]


def measured_ppl_changes(precision: str) -> list[float]:
    """Perplexity changes (%) we measured on SmolLM2-135M for the schemes of one precision ("4", "8", "16")."""
    from llmq.advisor import measured

    roles = rules.roles()
    return [r["ppl_change"] * 100 for s, r in measured.SMOL_QUALITY.get("rows", {}).items()
            if s in roles and roles[s].precision == precision]


def measured_band_note(band: Any) -> str | None:
    """Our own SmolLM2-135M measurement, quoted for models in its size band."""
    from llmq.advisor import measured

    q = measured.SMOL_QUALITY
    four, eight = measured_ppl_changes("4"), measured_ppl_changes("8") or [0]
    if not four or band.label != rules.size_band(q["params"]).label:
        return None
    return (f"measured on SmolLM2-135M (this size band): 4-bit schemes cost +{min(four):.1f}% to +{max(four):.1f}% "
            f"perplexity, 8-bit +{min(eight):.1f}% to +{max(eight):.1f}%, well beyond the rule of "
            f"thumb's {band.four_bit_loss[0]:g}-{band.four_bit_loss[1]:g}% for 4-bit (`{q['command']}`)")


def advise(model: Any = None, *, device: str | None = None, gpu_memory_gb: float | None = None,
           ram_gb: float | None = None, context: int = 2048, batch_size: int = 1, tolerance: Any = None,
           revision: str | None = None, trust_remote_code: bool = False, hardware: Hardware | None = None,
           schemes: list[str] | None = None, serve: str | None = None, gpu_arch: str | None = None) -> Advice:
    """Rank every scheme for ``model`` (Hub id, folder, .gguf, a bare parameter count, or None
    for the demo) on this machine (or the one the flags describe), without downloading weights.
    ``serve="vllm"``: rank by what that engine runs fast on the GPU generation (``gpu_arch``, else
    the detected GPU's; ``llmq.advisor.serving``), with commands that write its format."""
    from llmq.schemes import SCHEMES

    if not isinstance(context, int) or context < 1:
        raise ConfigError(f"context must be a positive number of tokens, got {context!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    from llmq.config import parse_fraction

    tol = parse_fraction(tolerance, "tolerance")
    hw = hardware or detect(device, gpu_memory_gb, ram_gb)
    prof = make_profile(model, revision=revision, trust_remote_code=trust_remote_code)
    n = prof.parameters
    band = rules.size_band(n)
    mem_limit = hw.memory_gb * GB
    from llmq.schemes import get_scheme

    names = [get_scheme(s).name for s in schemes] if schemes else list(SCHEMES)
    roles = rules.roles()

    est = {s: estimate_scheme(prof, s, device=hw.device) for s in names}
    bf16_bytes = (est.get("bf16") or estimate_scheme(prof, "bf16", device=hw.device)).bytes
    mems = {s: memory(prof, e, context=context, batch_size=batch_size, device=hw.device) for s, e in est.items()}
    fits = {s: m.total <= mem_limit for s, m in mems.items()}
    if hw.device == "cpu":
        situation = "cpu"
    elif any(fits[s] for s in names if roles[s].precision == "16"):
        situation = "gpu_fits"
    elif any(fits[s] for s in names if roles[s].precision == "8" and roles[s].gpu_only_kernels):
        situation = "gpu_8bit"
    else:
        situation = "gpu_4bit"
    tree = rules.tree()
    order = cpu_order(tree["cpu"]) if situation == "cpu" else tree[situation]
    served: dict[str, Any] = {}
    if serve is not None:
        from llmq.advisor import serving

        engine = serving.check_engine(serve)
        if hw.device != "cuda":
            raise ConfigError(f"--serve {engine} advises for a GPU server: pass --gpu-memory GB and --gpu-arch "
                              "when this machine has no GPU.")
        arch = serving.resolve_arch(gpu_arch, [g.capability for g in hw.gpus])
        served = {s: serving.vllm(get_scheme(s).serve_as, arch, batch_size) for s in names}
        order = sorted(names, key=lambda s: (served[s].rank, order.index(s)))
    cpu_pick = tree["cpu"][0]  # int8-dynamic: the tree's CPU scheme

    why_not = model_support(prof, trust_remote_code)
    cands = []
    model_arg = "" if model is None else (f" --model {prof.name}" if not isinstance(model, (int, float))
                                          else " --model <your-model>")
    for s in names:
        role = roles[s]
        loss, loss_src = rules.expected_loss(s, n)
        c = Candidate(s, est[s].label, role.role, est[s], mems[s], fits[s], loss, loss_src,
                      command=f"python -m llmq run{model_arg} --scheme {s} --device {hw.device}")
        c.installed, extra = _installed(s)
        if served:
            c.reasons.append(f"vLLM ({served[s].kernel}): {served[s].why}")
            c.command += export_flag(s)
        headroom = (mem_limit - mems[s].total) / GB
        where = "GPU" if hw.device == "cuda" else "RAM"
        if fits[s]:
            c.reasons.append(f"fits: {gib(mems[s].total)} of {hw.memory_gb:.1f} GiB {where} ({headroom:.1f} GiB spare)")
        else:
            c.status = "does not fit"
            c.reasons.append(f"needs {gib(mems[s].total)} > {hw.memory_gb:.1f} GiB {where}")
        q = quantize_cost(prof, s) if hw.device == "cpu" else None
        if q is not None:
            from llmq.cost import human_time

            c.quantize_cost = q
            c.reasons.append(f"quantizing it here takes about {q.ram_gib:.1f} GiB RAM and {human_time(q.wall_s)} "
                             "(measured cost model)")
            if q.ram_gib > hw.memory_gb and c.status != "does not fit":
                c.status = "does not fit"
                c.reasons.append(f"quantizing needs more RAM than the {hw.memory_gb:.1f} GiB here")
        # The decision tree (with --serve, the engine's kernels rank instead).
        if served:
            pass
        elif situation == "cpu":
            if s == cpu_pick:
                c.reasons.append(f"decision tree: CPU only -> {s}")
            note = measured_cpu_note(s)
            if note:
                verdict = cpu_speed_verdict(s)
                c.reasons.append({"slower": f"saves memory, not time: {note}",
                                  "mixed": f"speed vs fp32 depends on the phase: {note}"}.get(verdict, note))
            elif s.startswith("bnb-"):
                c.reasons.append("bitsandbytes runs on CPU (>= 0.50); its CPU speed was not measured here")
            elif role.gpu_only_kernels:
                c.reasons.append("its fast kernels (Marlin, ExLlama) are CUDA-only; CPU speed not measured here")
        elif situation == "gpu_fits":
            if role.precision == "16":
                c.reasons.append("decision tree: the 16-bit model fits -> no quantization needed")
            else:
                c.reasons.append("16-bit fits: quantize only to free memory for longer context or bigger batches")
        else:
            if role.precision == "16":
                c.reasons.append("decision tree: the 16-bit model does not fit")
            elif role.precision == "8" and s != cpu_pick:
                c.reasons.append("decision tree: too large for 16-bit -> 8-bit for max accuracy")
            elif role.precision == "4":
                c.reasons.append("decision tree: too large -> 4-bit for max compression")
        if s == cpu_pick and hw.device == "cuda" and not served:
            c.reasons.append("the decision tree's CPU scheme; on GPU it prefers 16-bit, bitsandbytes or GPTQ/AWQ")
        # The rule of thumb.
        if role.precision in ("4", "3"):
            lo, hi = band.four_bit_loss
            if band.label == "<100M":
                c.reasons.append(f"rule of thumb ({band.label}): avoid 4-bit ({lo:g}-{hi:g}% loss)")
                if c.status != "does not fit":
                    c.status = "avoid"
            elif band.label == "100M-1B":
                c.reasons.append(f"rule of thumb ({band.label}): prefer 8-bit; 4-bit costs {lo:g}-{hi:g}%")
                if c.status == "ok":
                    c.status = "warn"
            else:
                c.reasons.append(f"rule of thumb ({band.label}): {band.verdict} ({lo:g}-{hi:g}%)")
        if role.precision != "16" and est[s].bytes > bf16_bytes and c.status != "does not fit":
            # issue #11: e.g. int8 with fp32 embeddings on a big-vocabulary model outweighs bf16
            c.status = "avoid"
            c.reasons.append(f"larger than bf16 ({gb(est[s].bytes)} > {gb(bf16_bytes)}): quantizing saves nothing")
        if tol is not None and c.status in ("ok", "warn"):
            if loss is None:
                c.status = "warn"
                c.reasons.append("no expected-loss band: measure it against your tolerance (--scheme auto)")
            elif loss[0] > tol * 100:
                c.status = "exceeds tolerance"
                c.reasons.append(f"expected loss {c.loss_text} > tolerance {tol * 100:g}%")
            elif loss[1] > tol * 100:
                c.status = "warn"
                c.reasons.append(f"expected loss {c.loss_text} may exceed tolerance {tol * 100:g}%")
        if served and not served[s].fast and c.status in ("ok", "warn"):
            c.status = "avoid"
        if not c.installed:
            c.reasons.append(f"not installed: pip install 'llmq[{extra}]'")
        if why_not.get(s):
            c.status = "unsupported"
            c.reasons.insert(0, f"cannot quantize this model: {why_not[s]}")
        cands.append(c)

    cands.sort(key=lambda c: (STATUS_ORDER[c.status] >= STATUS_ORDER["avoid"], STATUS_ORDER[c.status] > 1,
                              order.index(c.scheme) if c.scheme in order else 99))
    for i, c in enumerate(cands, 1):
        c.rank = i
    # a scheme that trains (QAT) is never the recommendation: it needs data and time the user did not offer
    # (ok/warn sort before every other status, so this is cands[0] when no QAT scheme precedes it)
    first = next((c for c in cands if c.status in ("ok", "warn")
                  and not get_scheme(c.scheme).backend_cls().needs_training), None)
    if first is not None:
        first.status = "recommended"

    notes = []
    if prof.layout_source != "config (meta device)":
        notes.append(f"layout: {prof.layout_source}")
    notes += prof.notes
    notes.append("memory = weights + KV cache + prefill activations (with full-context fp32 logits) + "
                 f"{rules_overhead(hw.device)} GiB runtime overhead (assumed)")
    notes.append(f"expected-loss bands: 4-bit from the {rules.RULE_SOURCE}; 8-bit and 16-bit are priors "
                 "(see llmq/advisor/rules.py); `--scheme auto` measures instead of assuming")
    smol = measured_band_note(band)
    if smol:
        notes.append(smol)
    if hw.device == "cpu" and rules.MEASURED_CPU_SPEED.get("rows"):
        m = rules.MEASURED_CPU_SPEED
        fast = [s for s in cpu_order(list(m["rows"])) if s in names]
        notes.append("CPU candidates are ranked by measured decode speed vs fp32 ("
                     + ", ".join(f"{s} {cpu_speed_ratios(s)[0]:.2f}x" for s in fast)
                     + f"; `{m['command']}` on {m['machine']}, {m['model']}, batch 1); "
                     "ratios depend on the CPU and the model's size: rerun it on yours")
        slow = [s for s in fast if cpu_speed_verdict(s) != "faster"]
        if slow:
            notes.append("not simply a CPU speed-up here: " + "; ".join(f"{s} ({measured_cpu_note(s)})" for s in slow))
    if hw.device == "cuda":
        notes += measured_gpu_notes()
    serve_info = None
    if served:
        from llmq.advisor import serving

        serve_info = {"engine": "vllm", "gpu_arch": arch, "source": serving.SOURCE}
        notes.append(f"--serve vllm on {arch}, batch {batch_size}: ranked by the kernel vLLM runs each layout with "
                     f"({serving.SOURCE}); serve a folder with `vllm serve <folder> --tensor-parallel-size N`")
    return Advice(prof, hw, context, batch_size, tol, situation, band, cands, original(prof).bytes, notes,
                  serve_info)


def export_flag(scheme: str) -> str:
    """`` --format compressed-tensors`` where the scheme can write it (the format vLLM serves
    int8, FP8 and packed-int4 checkpoints from), else nothing."""
    from llmq.schemes import get_scheme

    try:
        cfg = get_scheme(scheme).config(format="compressed-tensors")
    except LlmqError:  # no such option, or the scheme cannot write it
        return ""
    return "" if cfg.to_dict() == get_scheme(scheme).config().to_dict() else " --format compressed-tensors"


def model_support(prof: ModelProfile, trust_remote_code: bool = False) -> dict[str, str]:
    """``{scheme: why it cannot quantize this architecture}`` from the profile's config (each plugin's
    ``unsupported``: layer types, converters, kernel shapes); empty without a config (a bare count)."""
    if prof.config is None:
        return {}
    from llmq.schemes import NOT_INSTALLED, support

    return {s: why for s, why in support(prof.config, trust_remote_code=trust_remote_code).items()
            if why and not why.startswith(NOT_INSTALLED)}


def quantize_cost(prof: ModelProfile, scheme: str) -> Any:
    """``llmq.cost.Projection`` of quantizing ``prof`` with ``scheme``'s defaults on this CPU
    (calibrated schemes on 16 x 512 tokens, the cost model's own setting), or None when unmeasured."""
    from llmq.cost import project
    from llmq.schemes import get_scheme

    sch = get_scheme(scheme)
    cls = sch.backend_cls()
    try:
        cfg = sch.config(**({"calibration": "wikitext2", "n_samples": 16, "seqlen": 512}
                            if cls.needs_calibration else {}))
        return project(sch.name, cls.cost_features(prof, sch, cfg))
    except (LlmqError, NotImplementedError, ZeroDivisionError, AttributeError):
        return None


def measured_gpu_notes() -> list[str]:
    """What our GPU bench (``measured.GPU_SPEED``) saw: decode speed of each scheme relative to bf16
    at batch 1 and 8, and which schemes did not finish there in eager mode."""
    from llmq.advisor import measured

    g = measured.GPU_SPEED
    parts = []
    for s, by_batch in g["rows"].items():
        if s == "bf16":
            continue
        ratios = ", ".join(f"{r['decode_x']:.2f}x at batch {b}" for b, r in by_batch.items())
        parts.append(f"{s} {ratios}")
    notes = [f"measured GPU decode speed vs bf16 ({g['model']}, {g['machine']}, eager, one run: `{g['command']}`): "
             + "; ".join(parts) + " — on GPU these formats save memory, not time, unless a fused kernel runs them"]
    if g.get("failed"):
        notes.append("did not finish that GPU bench in eager mode within 75 s per scheme: " + ", ".join(g["failed"]))
    return notes


def rules_overhead(device: str) -> float:
    from llmq.advisor.estimate import RUNTIME_OVERHEAD_GB

    return RUNTIME_OVERHEAD_GB["cuda" if device == "cuda" else "cpu"]
