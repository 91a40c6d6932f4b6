"""Quantization-aware fine-tuning (QAT) through torchao's QAT API.

``qat(model, scheme, data=..., steps=...)`` swaps every decoder ``nn.Linear`` for torchao's
``FakeQuantizedLinear`` (``QATConfig(base_config, step="prepare")``), fine-tunes so the weights
learn to sit where the quantization grid rounds them well, then converts with the *same* torchao
base config (``step="convert"``), so the saved model computes exactly what training saw. The
checkpoint is torchao safetensors with a ``TorchAoConfig`` in ``config.json`` and reloads with
plain ``from_pretrained`` (CPU or GPU; torchao's ``IntxUnpackedToInt8Tensor``).

Why these base configs: in torchao 0.18 ``QATConfig`` can derive fake quantizers from
``IntxWeightOnlyConfig``, ``Int8DynamicActivationIntxWeightConfig``, ``Int4WeightOnlyConfig``
(fbgemm layouts, CUDA only) and float8/MX/NVFP4 configs; not from
``Int8DynamicActivationInt8WeightConfig``. The Intx configs run on CPU and serialize to
safetensors, so every scheme here is built on them (W8A8 = int8 per-channel weights with int8
per-token dynamic activations through ``Int8DynamicActivationIntxWeightConfig``).

Everything scheme-specific (torchao config, size, card facts) is in ``QAT_SCHEMES`` so a scheme
plugin can wrap one entry; the training loop is scheme-agnostic.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from llmq.errors import CalibrationError, ConfigError, LlmqError, UnknownNameError

META_FILE = "llmq.json"
CKPT_FILE = "qat_state.pt"


# -- schemes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QATScheme:
    """One QAT target: what torchao config it fake-quantizes with and converts to, and the facts a
    model card needs. ``group_size=-1`` means per output channel."""

    name: str
    weight_bits: int
    group_size: int
    act_bits: int | None  # 8 = int8 per-token dynamic activations; None = weight-only
    description: str
    pip: tuple[str, ...] = ("torchao>=0.18", "transformers>=5")
    limitations: str = ("Weights are stored unpacked in int8 containers (torchao IntxUnpackedToInt8Tensor), "
                        "so a 4-bit checkpoint is about half the size of bf16, not a quarter; inference "
                        "dequantizes on the fly (no fused 4-bit kernel).")

    @property
    def bits(self) -> int:
        return self.weight_bits

    @property
    def tags(self) -> list[str]:
        t = ["llmq", "torchao", "qat", f"int{self.weight_bits}"]
        return t + (["w8a8"] if self.act_bits == 8 and self.weight_bits == 8 else [])

    def base_config(self) -> Any:
        """The torchao post-training config that QAT fake-quantizes toward and converts with (also
        the fair no-training baseline: applied directly it is round-to-nearest PTQ)."""
        import torch
        from torchao.quantization import (
            Int8DynamicActivationIntxWeightConfig,
            IntxWeightOnlyConfig,
            PerAxis,
            PerGroup,
        )

        dtype = {4: torch.int4, 8: torch.int8}[self.weight_bits]
        gran = PerAxis(0) if self.group_size == -1 else PerGroup(self.group_size)
        if self.act_bits == 8:
            return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=gran)
        return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=gran)

    def size_bytes(self, n_quantized: int, n_other: int) -> int:
        """Stored size: int8 containers + one fp32 scale per group (and int8 zero points)."""
        groups = n_quantized if self.group_size == -1 else n_quantized / self.group_size
        return int(n_quantized * 1 + groups * (4 + 1) + n_other * 4)

    def usage(self, repo: str) -> str:
        return ("import torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"model = AutoModelForCausalLM.from_pretrained({repo!r}, device_map='auto')\n"
                f"tokenizer = AutoTokenizer.from_pretrained({repo!r})")


QAT_SCHEMES: dict[str, QATScheme] = {s.name: s for s in (
    QATScheme("qat-int4", 4, 32, None, "int4 weights, group 32, symmetric; fine-tuned with fake quantization"),
    QATScheme("qat-8da4w", 4, 32, 8, "int4 weights (group 32) with int8 dynamic per-token activations; QAT"),
    QATScheme("qat-w8a8", 8, -1, 8, "int8 per-channel weights with int8 dynamic per-token activations; QAT"),
    QATScheme("qat-int8", 8, -1, None, "int8 per-channel weights, weight-only; QAT"),
)}
#: llmq scheme names QAT can target, mapped to the QAT scheme that produces the same format
ALIASES = {"int4": "qat-int4", "8da4w": "qat-8da4w", "w8a8": "qat-w8a8", "int8": "qat-int8",
           "int8-dynamic": "qat-w8a8"}


def get_qat_scheme(name: str) -> QATScheme:
    key = ALIASES.get(name, name)
    if key not in QAT_SCHEMES:
        raise UnknownNameError("QAT scheme", name, list(QAT_SCHEMES))
    return QAT_SCHEMES[key]


# -- configuration -------------------------------------------------------------------------------
@dataclass
class QATTrainConfig:
    """What one QAT run does. ``fake_quant=False`` trains the fp32 twin (same data, steps, seed,
    no fake quantization), the reference that separates quantization recovery from plain
    fine-tuning on the training text."""

    scheme: str = "qat-int4"
    data: Any = "wikitext2"
    steps: int = 100
    lr: float = 1e-5
    seed: int = 0
    batch_size: int = 4
    seqlen: int = 256
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    eval_every: int = 25  # held-out perplexity check for the early stop (only with max_ppl_increase)
    eval_windows: int = 8  # held-out windows of the training text (never trained on)
    max_ppl_increase: Any = None  # "5%": stop once fake-quant ppl <= (1+x) * original ppl on held-out text
    fake_quant: bool = True
    train_embeddings: bool = False  # frozen by default: not quantized, 1/5 of SmolLM2's parameters, and cheaper
    device: str | None = None
    gradient_checkpointing: bool | None = None  # None: on for CUDA

    def validate(self) -> None:
        """Every check that needs no weights; one line each."""
        from llmq.eval.gate import parse_increase

        get_qat_scheme(self.scheme)
        for k in ("steps", "batch_size", "seqlen", "checkpoint_every", "eval_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"QAT {k} must be a positive integer, got {v!r}.")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"QAT learning rate must be > 0, got {self.lr!r}.")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.eval_windows < 0:
            raise ConfigError("QAT warmup_steps, weight_decay, grad_clip and eval_windows must not be negative.")
        parse_increase(self.max_ppl_increase)
        if self.max_ppl_increase not in (None, "") and self.eval_windows < 1:
            raise ConfigError("max_ppl_increase needs eval_windows >= 1 (held-out text to check the gate on).")
        if self.data is None or (isinstance(self.data, (list, tuple)) and not self.data):
            raise CalibrationError("QAT needs training data: pass data='wikitext2', a text/JSONL file or a list of strings.")

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        d = asdict(self)
        d["data"] = self.data if isinstance(self.data, (str, Path)) else f"<{len(self.data)} strings>"
        for k in ("device", "checkpoint_every", "gradient_checkpointing"):
            d.pop(k)
        return json.loads(json.dumps(d, default=str))


# -- data ----------------------------------------------------------------------------------------
@dataclass
class TrainData:
    train: Any  # LongTensor [n_train, seqlen]
    heldout: Any  # LongTensor [n_heldout, seqlen]
    description: str
    tokens_available: int
    sha256: str


def build_data(cfg: QATTrainConfig, tokenizer: Any) -> TrainData:
    """Cut the text into non-overlapping windows; the last ``eval_windows`` are held out (the early
    stop is judged on them, never on the test split). Too little text is a one-line error."""
    import torch

    from llmq.calibration import load_texts

    texts, desc = load_texts(cfg.data)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise CalibrationError(f"QAT training data {desc} is empty.")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n_win = len(ids) // cfg.seqlen
    need = cfg.steps * cfg.batch_size
    if n_win < need + cfg.eval_windows:
        raise CalibrationError(
            f"QAT training data {desc} has {len(ids)} tokens = {n_win} windows of seqlen={cfg.seqlen}; "
            f"steps={cfg.steps} x batch_size={cfg.batch_size} needs {need} (+{cfg.eval_windows} held out). "
            "Give more text or lower steps/batch_size/seqlen.")
    t = torch.tensor(ids[: n_win * cfg.seqlen], dtype=torch.long).view(n_win, cfg.seqlen)
    train, heldout = t[: n_win - cfg.eval_windows], t[n_win - cfg.eval_windows:]
    return TrainData(train, heldout, desc, len(ids), hashlib.sha256(t.numpy().tobytes()).hexdigest())


def batch_order(n_windows: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Which windows each step trains on: a seeded shuffle, each window used at most once."""
    perm = list(range(n_windows))
    random.Random(seed).shuffle(perm)
    return [perm[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


# -- torchao plumbing ----------------------------------------------------------------------------
def _is_quantized_linear(skip: tuple[str, ...] = ("lm_head",)) -> Callable[[Any, str], bool]:
    """``lm_head`` stays full precision (tied to the embeddings in many models, as in llmq's other
    schemes). The filter must test the module type: quantize_ stops descending where it matches."""
    import torch

    def f(mod: Any, fqn: str) -> bool:
        return isinstance(mod, torch.nn.Linear) and not any(fqn == s or fqn.endswith("." + s) for s in skip)

    return f


def prepare_fake_quant(model: Any, scheme: QATScheme) -> Any:
    """Swap decoder linears for torchao ``FakeQuantizedLinear`` (in place)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(scheme.base_config(), step="prepare"), filter_fn=_is_quantized_linear())
    return model


def convert_fake_quant(model: Any, scheme: QATScheme) -> Any:
    """Fake-quantized linears -> real torchao quantized weights, with the same base config."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(scheme.base_config(), step="convert"), filter_fn=_is_quantized_linear())
    return model


def ptq(model: Any, scheme: QATScheme) -> Any:
    """The same torchao base config applied with no training: round-to-nearest PTQ baseline."""
    from torchao.quantization import quantize_

    quantize_(model, scheme.base_config(), filter_fn=_is_quantized_linear())
    return model


def attach_torchao_config(model: Any, scheme: QATScheme) -> None:
    """Make ``save_pretrained`` write torchao safetensors (flattened tensor subclasses + metadata)
    and a ``quantization_config`` that ``from_pretrained`` reloads."""
    from transformers import TorchAoConfig
    from transformers.quantizers import AutoHfQuantizer

    qc = TorchAoConfig(scheme.base_config(), modules_to_not_convert=["lm_head"])
    model.config.quantization_config = qc
    model.hf_quantizer = AutoHfQuantizer.from_config(qc)


def count_fake_quantized(model: Any) -> int:
    from torchao.quantization.qat import FakeQuantizedLinear

    return sum(isinstance(m, FakeQuantizedLinear) for m in model.modules())


# -- training ------------------------------------------------------------------------------------
@dataclass
class QATResult:
    model: Any
    tokenizer: Any
    config: QATTrainConfig
    training: dict
    source: Any
    saved_to: Path | None = None
    meta: dict = field(default_factory=dict)


def _lr_at(step: int, cfg: QATTrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% (the torchao/torchtune QAT recipes' shape)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / span)))


def heldout_ppl(model: Any, windows: Any, device: str, amp: Any = None) -> float:
    """Perplexity on held-out training windows (the early-stop signal)."""
    import contextlib

    import torch

    amp = amp or contextlib.nullcontext
    was = model.training
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad(), amp():
        for w in windows:
            x = w.unsqueeze(0).to(device)
            nll += model(input_ids=x, labels=x).loss.float().item() * (x.shape[1] - 1)
            n += x.shape[1] - 1
    model.train(was)
    return math.exp(nll / n)


def _save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a crash mid-write keeps the previous checkpoint."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{CKPT_FILE}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / CKPT_FILE)


def train(model: Any, data: TrainData, cfg: QATTrainConfig, *, device: str, checkpoint_dir: Path | None = None,
          resume: bool = False, progress: bool = True, baseline_heldout_ppl: float | None = None,
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune ``model`` (already prepared for fake quantization, or not for the fp32 twin) in
    place; returns the training facts. Deterministic for a given seed on a given device.
    ``baseline_heldout_ppl``: the untrained model's held-out perplexity, needed for the early stop."""
    import contextlib

    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    cuda = device.startswith("cuda")
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    gc = cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    if gc and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    if not cfg.train_embeddings and model.get_input_embeddings() is not None:
        for p in model.get_input_embeddings().parameters():  # a tied lm_head shares this parameter
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = batch_order(len(data.train), cfg.steps, cfg.batch_size, cfg.seed)
    from llmq.eval.gate import parse_increase

    max_inc = parse_increase(cfg.max_ppl_increase)
    if max_inc is not None and baseline_heldout_ppl is None:
        raise ConfigError("max_ppl_increase needs baseline_heldout_ppl (the untrained model's held-out perplexity).")
    hist: dict[str, Any] = {"loss": [], "heldout_ppl": [], "start_step": 0, "baseline_heldout_ppl": baseline_heldout_ppl,
                            "early_stopped": False, "tokens": 0, "train_seconds": 0.0}
    start = 0
    ckpt = checkpoint_dir / CKPT_FILE if checkpoint_dir is not None else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise LlmqError(f"--resume: no QAT checkpoint at {ckpt}; start without --resume.")
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state["config"] != cfg.fingerprint() or state["data_sha256"] != data.sha256:
            raise ConfigError(f"--resume: the checkpoint at {ckpt} was written with other settings or data "
                              f"({state['config']}); use the same ones or start a fresh run.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        hist = state["history"]
        hist["start_step"] = start

    def checkpoint(step: int) -> None:
        if ckpt is None:
            return
        _save_checkpoint(checkpoint_dir, {
            "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(), "config": cfg.fingerprint(), "data_sha256": data.sha256,
            "history": hist})

    tok_per_step = cfg.batch_size * cfg.seqlen
    bar = tqdm(total=cfg.steps, initial=start, desc="qat" if cfg.fake_quant else "fine-tune", unit="step",
               disable=not progress, dynamic_ncols=True)
    step = start
    try:
        t_run = time.perf_counter()
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            x = data.train[order[step]].to(device)
            with amp():
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise LlmqError(f"QAT loss became {lv} at step {step + 1}; lower the learning rate (lr={cfg.lr}).")
            dt = time.perf_counter() - t0
            hist["loss"].append(round(lv, 5))
            hist["tokens"] += tok_per_step
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.3f}", tok_s=f"{tok_per_step / dt:.0f}", refresh=False)
            if on_step is not None:
                on_step(step + 1, lv)
            done = step + 1
            if max_inc is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                p = heldout_ppl(model, data.heldout, device, amp)
                hist["heldout_ppl"].append([done, round(p, 4)])
                if p <= hist["baseline_heldout_ppl"] * (1 + max_inc):
                    hist["early_stopped"] = done < cfg.steps
                    hist["steps_done"] = done
                    checkpoint(done)
                    break
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
        else:
            hist["steps_done"] = cfg.steps
        hist["train_seconds"] += time.perf_counter() - t_run
    except KeyboardInterrupt:
        bar.close()
        raise LlmqError(f"QAT interrupted at step {step}; the last checkpoint is in {checkpoint_dir} "
                        "(run again with --resume to continue).") from None
    finally:
        bar.close()
    hist.setdefault("steps_done", cfg.steps)
    hist["tokens_per_s"] = round(hist["tokens"] / hist["train_seconds"], 1) if hist["train_seconds"] else None
    if gc and hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()
    model.eval()
    return hist


# -- public API ----------------------------------------------------------------------------------
def default_checkpoint_dir(output: str | os.PathLike) -> Path:
    out = Path(output).expanduser()
    return out.with_name(f".{out.name}.qat-checkpoint")


def qat(model: str | os.PathLike | None, scheme: str = "qat-int4", *, data: Any = "wikitext2", steps: int = 100,
        lr: float = 1e-5, seed: int = 0, output: str | os.PathLike | None = None, overwrite: bool = False,
        resume: bool = False, checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
        revision: str | None = None, trust_remote_code: bool = False, **options: Any) -> QATResult:
    """Fine-tune ``model`` with torchao fake quantization for ``scheme`` on ``data``, convert it to a
    real torchao-quantized model and (with ``output``) save it like ``llmq run`` does.

    ``options`` are :class:`QATTrainConfig` fields (``batch_size``, ``seqlen``, ``warmup_steps``,
    ``checkpoint_every``, ``max_ppl_increase``, ``fake_quant=False`` for the fp32 twin, ...). All
    inputs are checked before any weight loads."""
    import torch

    from llmq.io import check_output
    from llmq.models import resolve_model

    unknown = set(options) - set(QATTrainConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"Unknown QAT option(s): {', '.join(sorted(unknown))}.")
    cfg = QATTrainConfig(scheme=scheme, data=data, steps=steps, lr=lr, seed=seed, **options)
    cfg.validate()
    sch = get_qat_scheme(scheme)
    cfg.scheme = sch.name
    if output is not None and not resume:
        check_output(output, overwrite)
    source = resolve_model(None if model is None else str(model), revision=revision,
                           trust_remote_code=trust_remote_code)
    source.config()
    tokenizer = source.tokenizer()
    tdata = build_data(cfg, tokenizer)  # too little data fails here, before weights load
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckdir = Path(checkpoint_dir).expanduser() if checkpoint_dir else (
        default_checkpoint_dir(output) if output is not None else None)
    if resume and ckdir is None:
        raise ConfigError("--resume needs an output folder or checkpoint_dir to find the checkpoint in.")

    from transformers import AutoModelForCausalLM

    model_dir = source.local_dir()
    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map=device,
                                              trust_remote_code=trust_remote_code)
    base_ppl = None
    if cfg.max_ppl_increase not in (None, ""):
        # the early stop compares against the untrained model, on held-out training text (never test)
        base_ppl = heldout_ppl(hf, tdata.heldout, device)
    if cfg.fake_quant:
        prepare_fake_quant(hf, sch)
    hist = train(hf, tdata, cfg, device=device, checkpoint_dir=ckdir, resume=resume, progress=progress,
                 baseline_heldout_ppl=base_ppl)
    if cfg.fake_quant:
        convert_fake_quant(hf, sch)
    training = {
        "method": "quantization-aware training (torchao QATConfig prepare/convert)" if cfg.fake_quant
        else "fine-tuning without fake quantization (fp32 twin)",
        "data": tdata.description, "data_sha256": tdata.sha256, "tokens_available": tdata.tokens_available,
        "steps_planned": cfg.steps, "steps_done": hist["steps_done"], "early_stopped": hist["early_stopped"],
        "tokens_trained": hist["tokens"], "tokens_per_s": hist["tokens_per_s"],
        "train_seconds": round(hist["train_seconds"], 1), "resumed_from_step": hist["start_step"] or None,
        "loss_first": hist["loss"][0] if hist["loss"] else None,
        "loss_last_10_mean": round(sum(hist["loss"][-10:]) / max(1, len(hist["loss"][-10:])), 5),
        "heldout_ppl": hist["heldout_ppl"], "baseline_heldout_ppl": hist["baseline_heldout_ppl"],
        "config": cfg.fingerprint(), "device": device,
        "precision": "bf16 autocast, fp32 master weights" if device.startswith("cuda") else "fp32",
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    res = QATResult(hf, tokenizer, cfg, training, source)
    if output is not None:
        save(res, output, overwrite=overwrite or resume)
        if ckdir is not None and ckdir == default_checkpoint_dir(output):
            shutil.rmtree(ckdir, ignore_errors=True)  # the finished model replaces the checkpoint
    return res


def metadata(res: QATResult, size_after: int | None) -> dict:
    """``llmq.json`` in the shape ``llmq run`` writes, plus a ``training`` block for the card."""
    import torch
    import transformers

    import llmq
    from llmq.backends.base import package_version
    from llmq.models import count_parameters, folder_size

    sch = get_qat_scheme(res.config.scheme)
    quantized = res.config.fake_quant
    try:
        size_before = folder_size(res.source.local_dir(progress=False))
    except Exception:  # noqa: BLE001 - size is informative only
        size_before = None
    qc = res.model.config.quantization_config.to_dict() if quantized else None
    return {
        "llmq_version": llmq.__version__,
        "scheme": sch.name if quantized else "qat-fp32-twin",
        "backend": "torchao",
        "bits": sch.bits if quantized else 32,
        "config": {"scheme": sch.name, "description": sch.description, "group_size": sch.group_size,
                   "weight_bits": sch.weight_bits, "act_bits": sch.act_bits, "skip_modules": ["lm_head"]},
        "quantization_config": json.loads(json.dumps(qc, default=str)) if qc else None,
        "source": {"name": res.source.name, "kind": res.source.kind, "base_model": res.source.base_model_id,
                   "revision": res.source.revision},
        "calibration": None,
        "training": res.training,
        "parameters": count_parameters(res.model),
        "size_bytes": {"before": size_before, "after": size_after},
        "compression_ratio": round(size_before / size_after, 3) if size_before and size_after else None,
        "wall_time_s": res.training["wall_time_s"],
        "device": res.training["device"],
        "card": {"tags": sch.tags if quantized else ["llmq", "fine-tuned"], "pip": list(sch.pip),
                 "limitations": sch.limitations,
                 "trained": (f"Fine-tuned for {res.training['steps_done']} steps "
                             f"({res.training['tokens_trained']} tokens) on {res.training['data']} "
                             + ("with torchao fake quantization, then converted." if quantized
                                else "without fake quantization."))},
        "versions": {"llmq": llmq.__version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "torchao": package_version("torchao")},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# -- model card facts (publish.py asks these for folders whose llmq.json has a "training" block) -----
def card_scheme(meta: dict) -> QATScheme | None:
    """The QAT scheme a saved folder was made with, or None for folders ``llmq run`` made."""
    if not meta.get("training"):
        return None
    name = (meta.get("config") or {}).get("scheme") or meta.get("scheme")
    sch = QAT_SCHEMES.get(name)
    if sch is not None and meta.get("scheme") == "qat-fp32-twin":
        return replace(sch, name="qat-fp32-twin", description="fine-tuned without fake quantization (fp32 twin)")
    return sch


def card_rows(meta: dict) -> list[tuple[str, str]]:
    """Model-card rows that say the model was trained, on what, for how many steps."""
    t = meta.get("training") or {}
    c = t.get("config") or {}
    stop = " (stopped early: the gate held)" if t.get("early_stopped") else ""
    return [
        ("Training", f"{t.get('method')}: {t.get('steps_done')} of {t.get('steps_planned')} steps{stop}, "
                     f"{t.get('tokens_trained')} tokens"),
        ("Training data", f"`{t.get('data')}` (sha256 `{str(t.get('data_sha256', ''))[:16]}`)"),
        ("Training settings", f"lr {c.get('lr')}, batch {c.get('batch_size')} x {c.get('seqlen')} tokens, "
                              f"warmup {c.get('warmup_steps')}, seed {c.get('seed')}, {t.get('precision')}"),
        ("Training loss", f"{t.get('loss_first')} (first step) -> {t.get('loss_last_10_mean')} (mean of last 10)"),
    ]


def reproduce_command(meta: dict) -> tuple[str, str | None]:
    """The ``python -m llmq qat`` command that re-creates a QAT folder, and a caveat if any."""
    import shlex

    t = meta.get("training") or {}
    c = t.get("config") or {}
    src = meta.get("source") or {}
    args = ["python", "-m", "llmq", "qat"]
    note = None
    if src.get("kind") != "gguf" or not str(src.get("name", "")).endswith("SmolLM2-135M-Instruct"):
        args += ["--model", str(src.get("name"))]
    args += ["--scheme", str(c.get("scheme")), "--data", str(c.get("data")), "--steps", str(c.get("steps")),
             "--lr", str(c.get("lr")), "--seed", str(c.get("seed")), "--batch-size", str(c.get("batch_size")),
             "--seqlen", str(c.get("seqlen")), "--warmup-steps", str(c.get("warmup_steps"))]
    if c.get("max_ppl_increase"):
        args += ["--max-ppl-increase", str(c["max_ppl_increase"]), "--eval-every", str(c.get("eval_every"))]
    if not c.get("fake_quant", True):
        args.append("--fp32-twin")
    if str(c.get("data", "")).startswith("<"):
        note = "It was trained on a list of strings passed from Python, which this command cannot repeat."
    return " ".join(shlex.quote(a) for a in args + ["-o", "OUT"]), note


def save(res: QATResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Safetensors + tokenizer + ``llmq.json`` into a temporary folder, renamed when complete."""
    from llmq.io import atomic_dir, write_json
    from llmq.models import folder_size

    if res.config.fake_quant:
        attach_torchao_config(res.model, get_qat_scheme(res.config.scheme))
    with atomic_dir(path, overwrite=overwrite) as tmp:
        res.model.save_pretrained(tmp, safe_serialization=True)
        res.tokenizer.save_pretrained(tmp)
        if not list(tmp.glob("*.safetensors")):
            raise LlmqError("QAT save wrote no safetensors weights.")
        for f in tmp.glob("*.safetensors"):
            os.chmod(f, 0o644)
        res.meta = metadata(res, folder_size(tmp))
        write_json(tmp / META_FILE, res.meta)
    res.saved_to = Path(path).expanduser()
    return res.saved_to


__all__ = ["qat", "QATTrainConfig", "QATScheme", "QAT_SCHEMES", "QATResult", "get_qat_scheme", "build_data",
           "prepare_fake_quant", "convert_fake_quant", "ptq", "attach_torchao_config", "train", "save"]
