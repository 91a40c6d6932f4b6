"""QAT benchmark with twins: does quantization-aware training win back what PTQ loses?

Fine-tuning on WikiText can lower WikiText perplexity by domain adaptation alone, so every QAT
model is compared with its **fp32 twin**: the same model trained on the same data, steps and
seed with the same objective, without fake quantization. With ``--objective lm`` (cross-entropy)
the twin is fine-tuned for real; with ``--objective distill`` (llmq's default: KL divergence to the
original model's outputs) the twin is the original itself (the original is that objective's
minimum: loss 0, gradient 0 up to rounding, ``tests/pipeline/test_qat.py::test_distilled_fp32_twin_is_the_original``),
so it is not trained and every gap is measured against the untrained original. The no-training baseline is the same
torchao base config applied directly (round-to-nearest PTQ); ``--llmq-ptq`` adds llmq's calibrated
schemes (``awq-int4``, ``gptq-int4``: quantized in this run; ``awq-int4=DIR``: an ``llmq run``
output folder, scored in this run) to the "best PTQ 4-bit" comparison.

Train on WikiText-2 *train* text (``wikitext2`` = ``wiki.valid.tokens`` under LLMQ_DATA_DIR, a
split the test never sees), evaluate perplexity on WikiText-2 *test* (``wiki.test.raw``), tasks on
arc_easy/piqa. Writes the JSON after every stage, so a cut-short run keeps what it measured, and a
failing stage is recorded under ``errors`` while the others go on. ``--device cuda`` trains with bf16
autocast and gradient checkpointing; where GPTQModel is absent (or ``--no-pack``) ``qat-int4`` is
scored as its fake-quantized model, whose weights are exactly the ones its GPTQ export packs.

    LLMQ_DATA_DIR=../shared/data python scripts/bench_qat.py --steps 200          # the full protocol
    LLMQ_DATA_DIR=../shared/data python scripts/bench_qat.py --steps 10 --ppl-windows 4 --ppl-seqlen 512 \\
        --task-limit 0 --schemes qat-int4 --json eval/bench_qat_short.json           # a short run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, machine, write_record  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the offline SmolLM2-135M-Instruct demo")
    ap.add_argument("--schemes", default="qat-int4,qat-w8a8")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--scheme-steps", default="", help="per-scheme steps, e.g. qat-w8a8=100 (default: --steps)")
    ap.add_argument("--scheme-lr", default="", help="per-scheme learning rates, e.g. qat-w8a8=2e-5 (default: --lr)")
    ap.add_argument("--objective", default="distill", choices=["distill", "lm"])
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: steps // 10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--ppl-seqlen", type=int, default=1024)
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--task-limit", type=int, default=200, help="examples per task; 0 skips tasks")
    ap.add_argument("--llmq-ptq", default="",
                    help="extra llmq PTQ schemes for the 4-bit baseline: awq-int4 (quantized here) or awq-int4=DIR (a saved llmq folder)")
    ap.add_argument("--save-dir", default=None, help="also save each QAT model here (checks it reloads)")
    add_json_arg(ap)
    ap.add_argument("--device", default=None, help="default: cuda when present (bf16 autocast there), else cpu")
    ap.add_argument("--no-pack", action="store_true", help="score qat-int4's fake-quantized model, not its GPTQ folder")
    args = ap.parse_args()

    import importlib.util

    import torch

    from llmq.pipeline import qat as QP
    from llmq.backends.qat import convert as QC
    from llmq.backends.qat import train as QT
    from llmq.eval.perplexity import perplexity, tokenize
    from llmq.eval.tasks import resolve_task, run_task
    from llmq.models import resolve_model

    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # without GPTQModel (e.g. a GPU image) qat-int4 cannot be packed: its fake-quantized model is
    # scored instead, whose weights are the ones the GPTQ export would pack, bit for bit
    can_pack = importlib.util.find_spec("gptqmodel") is not None and not args.no_pack
    schemes = [QP.qat_scheme_name(s) for s in args.schemes.split(",") if s]
    cfgs = {s: QP.qat_config(s) for s in schemes}
    tasks = [resolve_task(t) for t in args.tasks.split(",") if t] if args.task_limit > 0 else []
    def per_scheme(spec: str, cast) -> dict:
        return {QP.qat_scheme_name(k): cast(v) for k, v in (kv.split("=", 1) for kv in spec.split(",") if kv)}

    scheme_steps, scheme_lr = per_scheme(args.scheme_steps, int), per_scheme(args.scheme_lr, float)
    if args.objective == "lm" and (scheme_steps or scheme_lr):
        ap.error("--scheme-steps/--scheme-lr need --objective distill (an lm run trains one fp32 twin for all schemes)")
    train_kw = dict(data="wikitext2", objective=args.objective, steps=args.steps, lr=args.lr, seed=args.seed, batch_size=args.batch_size,
                    seqlen=args.seqlen, warmup_steps=args.steps // 10 if args.warmup_steps is None else args.warmup_steps,
                    checkpoint_every=max(1, args.steps), progress=True, device=device)
    source = resolve_model(args.model)
    tok = source.tokenizer()
    test_tokens = tokenize(tok, "wikitext2")
    loadavg_start = [round(x, 2) for x in os.getloadavg()]  # the record's machine has the load at its write
    out: dict = {
        "model": source.base_model_id,
        "protocol": {
            "train": "wikitext2 train text (LLMQ_DATA_DIR: wiki.valid.tokens), non-overlapping windows, seeded order",
            "perplexity": f"WikiText-2 test, {args.ppl_windows} windows x {args.ppl_seqlen} tokens",
            "tasks": {t.name: args.task_limit for t in tasks},
            "train_settings": {k: v for k, v in train_kw.items() if k != "progress"},
            "scheme_steps": scheme_steps, "scheme_lr": scheme_lr,
            "gaps": "QAT vs its fp32 twin (same data, steps, seed, objective; with distill the twin is the original); "
                    "PTQ vs the model it quantized",
        },
        "models": {},
        "errors": {},
    }

    def write(quiet: bool = True) -> None:
        write_record(args.json, out, machine=machine(device=device, loadavg_start=loadavg_start), quiet=quiet)

    def measure(name: str, model, extra: dict | None = None, with_tasks: bool = True) -> dict:
        t0 = time.perf_counter()
        r = {"ppl": perplexity(model, tok, "wikitext2", seqlen=args.ppl_seqlen, limit=args.ppl_windows,
                               progress=False, tokens=test_tokens).value}
        for spec in tasks if with_tasks else []:
            res = run_task(model, tok, spec, limit=args.task_limit, progress=False)
            r[spec.name] = {"acc": res["acc"], "acc_norm": res.get("acc_norm"), "n": res["n"]}
        r["eval_seconds"] = round(time.perf_counter() - t0, 1)
        r.update(extra or {})
        out["models"][name] = r
        print(f"{name:28s} ppl {r['ppl']:.3f}  " + "  ".join(f"{t.name} {r[t.name]['acc']:.3f}" for t in tasks
                                                              if t.name in r) + f"  ({r['eval_seconds']} s)", flush=True)
        write()
        return r

    def fresh():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(source.local_dir(), dtype=torch.float32).to(device).eval()

    def guarded(name: str, fn) -> None:
        """One stage's error is recorded and the run goes on (a device run gets one try)."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            import traceback

            out["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            write()
        gc.collect()

    base = measure("original", fresh())

    def rtn(s: str) -> None:
        r = measure(f"ptq-rtn:{s}", QC.ptq(fresh(), cfgs[s]), with_tasks=False)
        r["gap_vs_original"] = r["ppl"] / base["ppl"] - 1

    for s in schemes:
        guarded(f"ptq-rtn:{s}", lambda s=s: rtn(s))

    def llmq_ptq(spec: str) -> None:
        import llmq

        name, _, folder = spec.partition("=")
        if folder:  # an llmq output folder made earlier, scored here with everything else
            meta = json.loads((Path(folder) / "llmq.json").read_text())
            if meta.get("scheme") != name:
                raise ValueError(f"{folder} holds scheme {meta.get('scheme')!r}, not {name!r}")
            model, _ = llmq.load(folder, device=device)
            extra = {"folder": folder, "config": meta.get("config"), "size_bytes": (meta.get("size_bytes") or {}).get("after"),
                     "quantize_seconds": meta.get("wall_time_s"), "llmq_version": meta.get("llmq_version")}
        else:
            q = llmq.quantize(args.model, name)
            model, extra = q.hf_model, {"quantize_seconds": round(q.wall_time_s, 1)}
        r = measure(f"ptq-llmq:{name}", model, extra, with_tasks=False)
        r["gap_vs_original"] = r["ppl"] / base["ppl"] - 1

    for spec in [n for n in args.llmq_ptq.split(",") if n]:
        guarded(f"ptq-llmq:{spec.partition('=')[0]}", lambda spec=spec: llmq_ptq(spec))
    write()

    def cfg_of(s: str):
        kw = {k: v for k, v in train_kw.items() if k not in ("progress", "device")}
        return QP.qat_config(s, **{**kw, **own(s)})

    def own(s: str) -> dict:
        steps = scheme_steps.get(s, args.steps)
        return {"steps": steps, "lr": scheme_lr.get(s, args.lr),
                "warmup_steps": steps // 10 if args.warmup_steps is None else args.warmup_steps}

    if args.objective == "distill":
        # distilling the original into itself has loss 0 and gradient 0: the twin is the original
        tw = base
        out["models"]["fp32-twin"] = {"same_as": "original", "why": "objective distill: the original is the "
                                      "objective's minimum (loss 0, gradient 0 up to rounding; "
                                      "tests/pipeline/test_qat.py::test_distilled_fp32_twin_is_the_original)"}
    else:
        # the twin trains without fake quantization: no scheme's export (nor its dependencies) is involved
        twin_model, twin_training = QT.train_model(source.local_dir(), cfg_of(schemes[0]), device, fake_quant=False)
        tw = measure("fp32-twin", twin_model.eval(), {"training": twin_training})

        def rtn_twin(s: str) -> None:
            r = measure(f"ptq-rtn-of-twin:{s}", QC.ptq(_copy(twin_model), cfgs[s]), with_tasks=False)
            r["gap_vs_twin"] = r["ppl"] / tw["ppl"] - 1

        for s in schemes:
            guarded(f"ptq-rtn-of-twin:{s}", lambda s=s: rtn_twin(s))
        twin_model = None  # free it before the QAT runs
        gc.collect()

    def qat_one(s: str) -> None:
        from llmq.backends.qat.config import exports_gptq

        if exports_gptq(cfgs[s]) and not can_pack:
            model, training = QT.train_model(source.local_dir(), cfg_of(s), device, convert=False, progress=True)
            training["scored"] = "the fake-quantized model (GPTQModel absent: not packed; same weights)"
            r = measure(f"qat:{s}", model.eval(), {"training": training})
        else:
            save_to = Path(args.save_dir) / s if args.save_dir else None
            res = QP.qat(args.model, s, output=save_to, overwrite=True, **{**train_kw, **own(s)})
            extra = {"training": res.backend.training}
            if save_to is not None:
                extra["saved_to"] = str(res.saved_to)
                extra["size_bytes"] = res.meta["size_bytes"]["after"]
            r = measure(f"qat:{s}", res.hf_model, extra)  # qat-int4: its GPTQ folder, run by GPTQModel
        r["gap_vs_twin"] = r["ppl"] / tw["ppl"] - 1

    for s in schemes:
        guarded(f"qat:{s}", lambda s=s: qat_one(s))

    out["verdicts"] = verdicts(out["models"], cfgs, tasks)
    write(quiet=False)
    print_table(out)
    return 0


def _copy(model):
    import copy

    return copy.deepcopy(model)


def verdicts(models: dict, cfgs: dict, tasks) -> dict:
    v: dict = {}
    ptq4 = {k: m.get("gap_vs_original", m.get("gap_vs_twin")) for k, m in models.items()
            if k.startswith("ptq") and ("int4" in k or "8da4w" in k or "awq" in k or "gptq" in k)}
    best_ptq4 = min(ptq4.values()) if ptq4 else None
    orig = models["original"]
    for name, s in cfgs.items():
        q = models.get(f"qat:{name}")
        if q is None:
            continue
        d = {"gap_vs_twin": q["gap_vs_twin"], "train_seconds": q["training"]["train_seconds"],
             "steps": q["training"]["steps_done"]}
        if s.bits == 4:
            d["ptq_4bit_gaps"] = ptq4
            d["best_ptq_4bit_gap"] = best_ptq4
            d["target_half_of_best_ptq"] = best_ptq4 is not None and q["gap_vs_twin"] <= best_ptq4 / 2
            d["moonshot_5pct"] = q["gap_vs_twin"] <= 0.05
            if q["training"]["device"] == "cpu":  # the target is for the 2-core CPU
                d["within_30_min"] = q["training"]["wall_time_s"] <= 1800
        if s.bits == 8 and s.act_bits == 8:
            d["target_0.5pct"] = q["gap_vs_twin"] <= 0.005
        for t in tasks:
            if t.name in q and t.name in orig:
                d[f"{t.name}_drop_points"] = 100 * (orig[t.name]["acc"] - q[t.name]["acc"])
                d[f"{t.name}_within_1_point"] = d[f"{t.name}_drop_points"] <= 1.0
        v[name] = d
    return v


def print_table(out: dict) -> None:
    print(f"\n{'model':30s} {'ppl':>9s} {'gap':>8s}  tasks")
    for k, m in out["models"].items():
        if "ppl" not in m:
            print(f"{k:30s} = {m.get('same_as')}")
            continue
        gap = m.get("gap_vs_twin", m.get("gap_vs_original"))
        tasks = "  ".join(f"{n} {m[n]['acc']:.3f}" for n in ("arc_easy", "piqa") if n in m)
        print(f"{k:30s} {m['ppl']:9.3f} {'' if gap is None else f'{100 * gap:+7.2f}%'}  {tasks}")
    print(json.dumps(out.get("verdicts", {}), indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
