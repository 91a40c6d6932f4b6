"""Quantization-aware fine-tuning (QAT) through torchao's QAT API: the training engine behind the
``qat-*`` schemes (``llmq.backends.qat.plugin``; the config in ``config``, torchao plumbing in
``convert``) and ``llmq.qat`` (``llmq.pipeline.qat``).

Every decoder ``nn.Linear`` (not ``lm_head``) becomes torchao's ``FakeQuantizedLinear``
(``QATConfig(base_config, step="prepare")``); the model is fine-tuned so its weights learn to sit
where the quantization grid rounds them well; then it is exported with exactly that grid:
int4 weight-only (``qat-int4``) by ``to_gptq`` into packed GPTQ linears (GPTQModel's packer and
kernels, saved like ``gptq-int4``), the other schemes by converting with the *same* base config
(``step="convert"``) into torchao quantized weights (``IntxUnpackedToInt8Tensor``), saved as
safetensors with a ``TorchAoConfig`` that plain ``from_pretrained`` reloads.

The default objective is **distillation**: the loss is the KL divergence from the original model's
next-token distribution (the original runs frozen beside the student), so training wins back what
rounding lost instead of adapting the model to the training text. Measured on the demo, int4 g32,
50 steps of 2 x 256 WikiText-2 train tokens, lr 1e-4 (an ad-hoc run recorded in the README's QAT
section): distillation left +11.3% perplexity against the original, cross-entropy +17.9% against
its fine-tuned fp32 twin.

``fake_quant=False`` trains the **fp32 twin** (same data, steps, seed, no fake quantization): the
reference that separates quantization recovery from plain fine-tuning on the training text. With
the distillation objective the twin is the original model itself (the original is the objective's
minimum: loss 0, gradient 0 up to float rounding), so a twin is only trained with ``objective="lm"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llmq.backends.qat.convert import attach_torchao_config, convert_fake_quant, prepare_fake_quant, to_gptq
from llmq.errors import CalibrationError, ConfigError, LlmqError

#: a checkpoint folder: tensors in safetensors, everything else in JSON; nothing is unpickled on resume
CKPT_META = "qat_state.json"
CKPT_MODEL = "model.safetensors"
CKPT_STATE = "optimizer.safetensors"  # the optimizer's tensors and the RNG state
#: what llmq wrote before (a pickle, which can run code when loaded): refused on resume, never loaded
LEGACY_CKPT = "qat_state.pt"
CKPT_FORMAT = 2


def fingerprint(cfg: Any, fake_quant: bool) -> dict:
    """The settings a resumed run must share with the run that wrote the checkpoint."""
    d = cfg.to_dict()
    for k in ("checkpoint_every", "gradient_checkpointing"):
        d.pop(k, None)
    d["fake_quant"] = fake_quant
    return json.loads(json.dumps(d, default=str))


# -- data ----------------------------------------------------------------------------------------
@dataclass
class TrainData:
    train: Any  # LongTensor [n_train, seqlen]
    heldout: Any  # LongTensor [n_heldout, seqlen]
    description: str
    tokens_available: int
    sha256: str


def build_data(cfg: Any, tokenizer: Any) -> TrainData:
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


# -- training ------------------------------------------------------------------------------------
def _lr_at(step: int, cfg: Any) -> float:
    """Linear warmup, then cosine decay to 10% (the torchao/torchtune QAT recipes' shape)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / span)))


def distill_loss(student_logits: Any, teacher_logits: Any) -> Any:
    """Mean per-token KL(teacher || student) over every position, in fp32 (the logits may be bf16
    under autocast)."""
    import torch.nn.functional as F

    s = F.log_softmax(student_logits.float(), -1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float(), -1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def load_teacher(model_dir: Path, device: str) -> Any:
    """The frozen original the distillation objective matches (bf16 on CUDA, fp32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


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


def _encode(obj: Any, key: str, tensors: dict) -> Any:
    """``obj`` as JSON, its tensors moved into ``tensors`` under ``key`` paths. Only tensors, dicts,
    lists, tuples and JSON scalars are accepted: a checkpoint holds data, never objects."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"QAT checkpoint: cannot store {type(obj).__name__} at {key}")


def _decode(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj


def save_checkpoint(ckdir: Path, model: Any, opt: Any, record: dict) -> None:
    """Write the whole checkpoint folder through ``llmq.outdir.atomic_output`` (temp folder, swapped in
    when complete): a crash mid-write keeps the previous checkpoint, and the folder is replaced only
    if it is one (or empty). ``record``: JSON facts (step, settings, model, data, history)."""
    import torch
    from safetensors.torch import save_file, save_model

    from llmq.io import write_json
    from llmq.outdir import atomic_output

    tensors: dict = {"rng": torch.get_rng_state()}
    optimizer = _encode(opt.state_dict(), "optimizer", tensors)
    with atomic_output(ckdir, overwrite=True, track=False) as tmp:
        save_model(model, str(tmp / CKPT_MODEL), force_contiguous=True)
        save_file(tensors, str(tmp / CKPT_STATE))
        write_json(tmp / CKPT_META, {**record, "format": CKPT_FORMAT, "optimizer": optimizer})


def read_checkpoint(ckdir: Path) -> dict:
    """The checkpoint's JSON record (no tensors read); one-line errors for a missing, old-format or
    unreadable checkpoint."""
    meta = ckdir / CKPT_META
    if not meta.is_file():
        if (ckdir / LEGACY_CKPT).is_file():
            raise ConfigError(f"--resume: {ckdir / LEGACY_CKPT} is a pickle from an older llmq, which llmq no longer "
                              "loads (unpickling can run code); start without --resume.")
        raise LlmqError(f"--resume: no QAT checkpoint in {ckdir}; start without --resume.")
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: {meta} is not a readable QAT checkpoint ({e}); start without --resume.") from None
    if not isinstance(record, dict) or record.get("format") != CKPT_FORMAT:
        raise ConfigError(f"--resume: {meta} is not a QAT checkpoint of this llmq (format "
                          f"{record.get('format') if isinstance(record, dict) else '?'}); start without --resume.")
    return record


def check_resume(ckdir: Path, *, config: dict, weights_sha256: str | None = None,
                 data_sha256: str | None = None) -> dict:
    """Refuse, in one line, a checkpoint that belongs to another run: other settings, another model
    (weights of the same shape included: compared by content) or other training data. Pipelines call
    it before training with what they know; ``train`` calls it again with everything. Returns the record."""
    record = read_checkpoint(ckdir)
    if record.get("config") != config:
        diff = sorted(k for k in set(config) | set(record.get("config") or {})
                      if config.get(k) != (record.get("config") or {}).get(k))
        raise ConfigError(f"--resume: the checkpoint in {ckdir} was written with other settings ({', '.join(diff)} "
                          "differ); use the same ones or start without --resume.")
    model = record.get("model") or {}
    if weights_sha256 is not None and model.get("weights_sha256") != weights_sha256:
        raise ConfigError(f"--resume: the checkpoint in {ckdir} was trained from another model ({model.get('name')}, "
                          f"weights sha256 {str(model.get('weights_sha256'))[:12]} vs {weights_sha256[:12]}); "
                          "resume with that model or start without --resume.")
    if data_sha256 is not None and record.get("data_sha256") != data_sha256:
        raise ConfigError(f"--resume: the checkpoint in {ckdir} was trained on other data; use the same data or "
                          "start without --resume.")
    return record


def load_checkpoint(ckdir: Path, model: Any, opt: Any, device: str) -> dict:
    """Restore model, optimizer and RNG from safetensors (no pickle); returns the JSON record."""
    import torch
    from safetensors.torch import load_file, load_model

    record = read_checkpoint(ckdir)
    load_model(model, str(ckdir / CKPT_MODEL), strict=True, device=device)
    tensors = load_file(str(ckdir / CKPT_STATE))
    opt.load_state_dict(_decode(record["optimizer"], tensors))
    torch.set_rng_state(tensors["rng"])
    return record


def train(model: Any, data: TrainData, cfg: Any, *, device: str, checkpoint_dir: Path | None = None,
          resume: bool = False, progress: bool = True, baseline_heldout_ppl: float | None = None,
          on_step: Callable[[int, float], None] | None = None, fake_quant: bool = True,
          teacher: Any = None, source: dict | None = None) -> dict:
    """Fine-tune ``model`` (already prepared for fake quantization, or not for the fp32 twin) in
    place; returns the training facts. Deterministic for a given seed on a given device.
    ``baseline_heldout_ppl``: the untrained model's held-out perplexity, needed for the early stop.
    ``teacher``: the frozen original, required by ``cfg.objective == "distill"``. ``source``: the
    model trained (``{"name", "weights_sha256"}``), recorded in checkpoints and checked on resume."""
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
    from llmq.config import parse_increase

    distill = cfg.objective == "distill"
    if distill and teacher is None:
        raise ConfigError("objective='distill' needs the original model as teacher.")
    max_inc = parse_increase(cfg.max_ppl_increase)
    if max_inc is not None and baseline_heldout_ppl is None:
        raise ConfigError("max_ppl_increase needs baseline_heldout_ppl (the untrained model's held-out perplexity).")
    hist: dict[str, Any] = {"loss": [], "heldout_ppl": [], "start_step": 0, "baseline_heldout_ppl": baseline_heldout_ppl,
                            "early_stopped": False, "tokens": 0, "train_seconds": 0.0}
    start = 0
    settings = fingerprint(cfg, fake_quant)
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("--resume needs an output folder or checkpoint_dir to find the checkpoint in.")
        check_resume(checkpoint_dir, config=settings, data_sha256=data.sha256,
                     weights_sha256=(source or {}).get("weights_sha256"))
        state = load_checkpoint(checkpoint_dir, model, opt, device)
        start = state["step"]
        hist = state["history"]
        hist["start_step"] = start

    def checkpoint(step: int) -> None:
        if checkpoint_dir is None:
            return
        save_checkpoint(checkpoint_dir, model, opt, {
            "step": step, "config": settings, "data_sha256": data.sha256, "model": source or {}, "history": hist})

    tok_per_step = cfg.batch_size * cfg.seqlen
    bar = tqdm(total=cfg.steps, initial=start, desc="qat" if fake_quant else "fine-tune", unit="step",
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
                if distill:
                    with torch.no_grad():
                        target = teacher(input_ids=x).logits
                    loss = distill_loss(model(input_ids=x).logits, target)
                    del target
                else:
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


def check_twin(objective: str, fake_quant: bool) -> None:
    """An fp32 twin trained by distillation from the original *is* the original (the objective's
    minimum: loss 0, gradient 0 up to rounding, which Adam would only amplify into a random walk):
    refuse to spend the training time on it."""
    if not fake_quant and objective == "distill":
        raise ConfigError("The fp32 twin of a distilled QAT run is the original model itself (the original is the "
                          "distillation objective's minimum); train the twin with objective='lm' (--objective lm).")


def train_model(model_dir: Path, cfg: Any, device: str, *, checkpoint_dir: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True, fake_quant: bool = True,
                on_step: Callable[[int, float], None] | None = None, convert: bool = True,
                source_name: str | None = None) -> tuple[Any, dict]:
    """Load ``model_dir`` in fp32, fine-tune it (with fake quantization unless ``fake_quant=False``:
    the fp32 twin), convert it and attach the torchao config ``save_pretrained`` writes. Returns
    ``(model, training facts)``; the QAT plugin's ``quantize``. ``convert=False`` returns the
    fake-quantized model unconverted (a benchmark on a machine without GPTQModel scores it: its
    weights are the ones ``to_gptq`` would pack, bit for bit)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq.models import weights_fingerprint

    check_twin(cfg.objective, fake_quant)
    tdata = build_data(cfg, AutoTokenizer.from_pretrained(model_dir))
    ckdir = Path(checkpoint_dir).expanduser() if checkpoint_dir else None
    if resume and ckdir is None:
        raise ConfigError("--resume needs an output folder or checkpoint_dir to find the checkpoint in.")
    source = {"name": source_name or str(model_dir), "weights_sha256": weights_fingerprint(model_dir)} if ckdir else None
    if resume:  # before the weights load: settings, model and data must be the checkpoint's
        check_resume(ckdir, config=fingerprint(cfg, fake_quant), weights_sha256=source["weights_sha256"],
                     data_sha256=tdata.sha256)
    t0 = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map=device)
    base_ppl = None
    if cfg.max_ppl_increase not in (None, ""):
        # the early stop compares against the untrained model, on held-out training text (never test)
        base_ppl = heldout_ppl(hf, tdata.heldout, device)
    if fake_quant:
        prepare_fake_quant(hf, cfg)
    teacher = load_teacher(model_dir, device) if cfg.objective == "distill" else None
    hist = train(hf, tdata, cfg, device=device, checkpoint_dir=ckdir, resume=resume, progress=progress,
                 baseline_heldout_ppl=base_ppl, on_step=on_step, fake_quant=fake_quant, teacher=teacher,
                 source=source)
    teacher = None
    if fake_quant and convert:
        from llmq.backends.qat.config import exports_gptq

        if exports_gptq(cfg):
            to_gptq(hf, cfg)
        else:
            convert_fake_quant(hf, cfg)
            attach_torchao_config(hf, cfg)
    training = {
        "method": "quantization-aware training (torchao QATConfig prepare/convert)" if fake_quant
        else "fine-tuning without fake quantization (fp32 twin)",
        "fake_quant": fake_quant, "objective": cfg.objective,
        "data": tdata.description, "data_sha256": tdata.sha256, "tokens_available": tdata.tokens_available,
        "steps_planned": cfg.steps, "steps_done": hist["steps_done"], "early_stopped": hist["early_stopped"],
        "tokens_trained": hist["tokens"], "tokens_per_s": hist["tokens_per_s"],
        "train_seconds": round(hist["train_seconds"], 1), "resumed_from_step": hist["start_step"] or None,
        "loss_first": hist["loss"][0] if hist["loss"] else None,
        "loss_last_10_mean": round(sum(hist["loss"][-10:]) / max(1, len(hist["loss"][-10:])), 5),
        "heldout_ppl": hist["heldout_ppl"], "baseline_heldout_ppl": hist["baseline_heldout_ppl"],
        "device": device, "precision": "bf16 autocast, fp32 master weights" if device.startswith("cuda") else "fp32",
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    return hf, training


