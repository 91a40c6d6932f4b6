"""GPU speed and memory of every llmq scheme on a 1B-shaped random Llama, plus a QAT CUDA smoke test.

Why: the advisor's GPU speed ratios (issue #11) need one measured run on a GPU, and QAT's CUDA
branch (bf16 autocast + gradient checkpointing, issue #12) had never run on CUDA. CI has no GPU,
so this script is prepared here, dry-run on CPU (``--tiny --device cpu``) and run once on the GPU
machine. Random weights: every number is speed or memory; quality is meaningless and not measured.

Sections, each guarded (an error or timeout is recorded and the run goes on), JSON rewritten after
each step so a killed run still returns what it finished:

1. env: versions, device name, argv.
2. qat_smoke (child process, timeout): ``llmq.qat`` on a tiny random Llama for a few steps on the
   device, for qat-w8a8 and qat-int4; hooks record whether bf16 autocast was on in the forward and
   whether gradient checkpointing recomputed the forward (layer-0 MLP runs twice per step); the
   converted output is reloaded with ``llmq.load`` and its logits must be finite.
3. source: a random Llama with TinyLlama-1.1B's shape (hidden 2048, 22 layers, intermediate 5632,
   32 heads, 4 KV heads, vocab 32000), saved in bf16.
4. schemes: ``llmq.quantize(src, scheme, device=...)`` + save, then ``llmq.bench`` (one child process
   per scheme, eager, batch 1 and 8, 512-token prompt, 128 new tokens, ``--samples`` timed runs,
   per-scheme timeout); ratios are to bf16 (the first scheme). Eager is the common mode: it is how
   transformers runs every one of these folders, and a CUDA compile per shape costs minutes.
5. compiled (only if time is left): bf16 and int8-dynamic ``@compile`` (llmq.fastpath: static cache
   + torch.compile; torchao's int8 on CUDA is meant to be compiled), batch 1, ratios to bf16@compile;
   ``first_call_s`` includes the compile.

Not run: gptq-int4/gptq-int8/awq-int4. GPTQModel is not on the GPU image, its wheel and deps do
not fit the 64 MiB that travels next to torchao/transformers/bitsandbytes, and its fast CUDA
kernels JIT-build on first use (Marlin ~5 min, Machete downloads CUTLASS: eval/gpu/h100_gpu_check.json),
which alone exceeds the run's budget.

Wheels (the GPU image has transformers 5.17, no torchao/bitsandbytes; llmq needs transformers
>= 5.20.2), fetched here into ``.whl/`` (ignored via .git/info/exclude) with the device README's
``pip download --no-deps --only-binary=:all: --python-version 3.12 ...`` recipe: transformers 5.24.0,
torchao 0.18.0, regex 2026.11.19 (transformers 5.24 needs regex >= 2025.10.22) and bitsandbytes 0.50.2
pruned to its CUDA 13.0 + CPU libraries (43 MB -> 3.9 MB; the image's torch is cu130):
``python scripts/bench_gpu.py --prune-bnb-wheel ORIGINAL.whl .whl/``.

Device command (carry [".whl"]; ~7.5 min wall at most, the script stops itself at --budget 440 s):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && set -o pipefail && PYTHONUNBUFFERED=1 timeout 470 python3 scripts/bench_gpu.py --out $OUT/bench.json 2>&1 | tee $OUT/log.txt

then commit ``$OUT/bench.json`` as ``eval/gpu/bench.json``. CPU dry run of every code path but the
CUDA kernels: ``OMP_NUM_THREADS=1 nice -n 15 python scripts/bench_gpu.py --tiny --device cpu --out /tmp/gpubench-dry.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import EVAL, add_json_arg, machine, write_record  # noqa: E402

SCHEMES = ["bf16", "fp16", "int8-dynamic", "bnb-nf4", "bnb-int8", "int8-static", "bnb-fp4"]
NOT_RUN = {s: "GPTQModel is not on the GPU image, does not fit the 64 MiB that travels, and its CUDA kernels "
              "JIT-build on first use (Marlin ~5 min, eval/gpu/h100_gpu_check.json): beyond this run's budget"
           for s in ("gptq-int4", "gptq-int8", "awq-int4")}
#: TinyLlama-1.1B's shape; --tiny: a 2-layer toy for the CPU dry run.
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}
QUANTIZE_KW = {"int8-static": {"calibration": "builtin", "n_samples": 16, "seqlen": 256}}
QAT_SCHEMES = ("qat-w8a8", "qat-int4")
QAT_STEPS = 4


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Report:
    """The JSON record, rewritten (atomically: ``_record.write_record``) after every step."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.t0 = path, data, time.perf_counter()
        self.machine: dict | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.machine = self.machine or machine()  # detected once, at the first write
        write_record(self.path, self.data, machine=self.machine, quiet=True)


def error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:400] if msg else ''}"


# -- environment ---------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import torch

    from llmq.backends.base import package_version

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": device, "cpu_count": os.cpu_count(), "pythonpath": os.environ.get("PYTHONPATH", "")}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for pkg in ("transformers", "torchao", "bitsandbytes", "accelerate", "safetensors", "tokenizers",
                "gptqmodel"):
        env[pkg] = package_version(pkg)
    import transformers

    env["transformers_file"] = transformers.__file__  # proves the carried 5.24 shadows the image's 5.17
    return env


# -- source model --------------------------------------------------------------------------------
def build_source(path: Path, shape: str, device: str) -> dict:
    """A random Llama of ``shape`` saved in bf16 with llmq's offline BPE tokenizer (its vocabulary is
    smaller than the embedding; ids beyond it are simply never fed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmq.testing import tiny_tokenizer

    t0 = time.perf_counter()
    s = SHAPES[shape]
    tok = tiny_tokenizer(min(4096, s["vocab_size"]))
    cfg = LlamaConfig(**s, max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return {"shape": shape, **s, "params": params, "dtype": "bfloat16", "size_mb": round(size / 1e6, 1),
            "tokenizer_len": len(tok), "build_s": round(time.perf_counter() - t0, 1)}


# -- quantize + bench ----------------------------------------------------------------------------
def quantize_one(src: Path, scheme: str, out: Path, device: str) -> dict:
    import torch

    import llmq

    t0 = time.perf_counter()
    qm = llmq.quantize(src, scheme, device=device, **QUANTIZE_KW.get(scheme, {}))
    qs = time.perf_counter() - t0
    layer = qm.model.model.layers[0].self_attn.q_proj
    info = {"quantize_s": round(qs, 1), "module": type(layer).__name__,
            "weight_type": type(getattr(layer, "weight", None)).__name__}
    qm.save(out)
    meta = json.loads((out / "llmq.json").read_text())
    info.update(save_s=round(time.perf_counter() - t0 - qs, 1),
                size_mb=round(meta["size_bytes"]["after"] / 1e6, 1), options=QUANTIZE_KW.get(scheme, {}))
    del qm
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return info


def bench_rows(spec: str, args: argparse.Namespace, batch_sizes: tuple[int, ...], timeout: float):
    """``llmq.bench`` on one model in a child process; (rows, error or None)."""
    from llmq.benchmark import BenchTimeout, bench

    try:
        return bench([spec], prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch_sizes=batch_sizes,
                     device=args.device, samples=args.samples, timeout=timeout), None
    except BenchTimeout as e:
        return e.rows, str(e)
    except Exception as e:  # noqa: BLE001 - one scheme's failure must not end the run
        return [], error_text(e)


def with_ratios(rows: list) -> list[dict]:
    from llmq.benchmark import add_ratios

    add_ratios(rows)
    return [r.to_dict() for r in rows]


# -- QAT smoke (child process) -------------------------------------------------------------------
def qat_smoke(device: str, work: Path) -> dict:
    """Train a tiny random Llama with ``llmq.qat`` on ``device`` and check the CUDA settings took hold.

    ``llmq.backends.qat.train.train`` is wrapped to hook layer 0's MLP during training: each call
    records the autocast state (and the MLP's output dtype). With gradient checkpointing the backward
    pass recomputes the layer, so the MLP is entered twice per step (once per step without)."""
    import torch

    import llmq
    from llmq.backends.qat import train as QT
    from llmq.testing import tiny_llama

    src = tiny_llama(work / "qat-src", hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab_size=512)
    cuda = device.startswith("cuda")
    dev_type = "cuda" if cuda else "cpu"
    out = {"device": device, "steps": QAT_STEPS, "runs": []}
    runs = [(s, {}) for s in QAT_SCHEMES]
    if not cuda:  # proves the recompute detector on CPU: checkpointing forced on there
        runs.append(("qat-w8a8", {"gradient_checkpointing": True}))
    for scheme, opts in runs:
        rec: dict = {"scheme": scheme, "options": opts, "ok": False, "forward_calls": []}
        orig = QT.train

        def wrapped(model, *a, _rec=rec, **kw):
            mlp = model.model.layers[0].mlp
            before = mlp.down_proj.weight.detach().float().clone()

            def pre_hook(mod, inp):  # a pre-hook: recomputation stops early, before forward hooks would fire
                _rec["forward_calls"].append({
                    "autocast": torch.is_autocast_enabled(dev_type),
                    "autocast_dtype": str(torch.get_autocast_dtype(dev_type)).replace("torch.", ""),
                    "grad": torch.is_grad_enabled()})
                _rec.setdefault("gradient_checkpointing_flag", bool(getattr(model, "is_gradient_checkpointing", None)))

            def hook(mod, inp, o):
                _rec.setdefault("mlp_out_dtypes", set()).add(str(o.dtype).replace("torch.", ""))

            hs = [mlp.register_forward_pre_hook(pre_hook), mlp.register_forward_hook(hook)]
            try:
                return orig(model, *a, **kw)
            finally:
                for h in hs:
                    h.remove()
                _rec["layer0_weights_changed"] = bool((mlp.down_proj.weight.detach().float() != before).any())

        t0 = time.perf_counter()
        try:
            QT.train = wrapped
            name = f"qat-{len(out['runs'])}-{scheme}"
            qm = llmq.qat(src, scheme, data="builtin", steps=QAT_STEPS, batch_size=2, seqlen=64, warmup_steps=1,
                          lr=1e-4, output=work / name, device=device, progress=False, **opts)
            training = getattr(qm.backend, "training", None) or {}
            rec["training"] = {k: training.get(k) for k in ("precision", "device", "steps_done", "loss_first",
                                                            "loss_last_10_mean", "tokens_per_s", "train_seconds")}
            calls = rec["forward_calls"]
            rec["n_forward_calls"] = len(calls)
            rec["autocast_bf16_all"] = bool(calls) and all(c["autocast"] and c["autocast_dtype"] == "bfloat16"
                                                            for c in calls)
            rec["mlp_out_dtypes"] = sorted(rec.get("mlp_out_dtypes", ()))
            rec["recomputed_forward"] = len(calls) == 2 * QAT_STEPS
            del qm
            model, tok = llmq.load(work / name, device=device)
            ids = tok("def f(x): return x + 1", return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                logits = model(ids).logits
            rec["reload_finite"] = bool(torch.isfinite(logits).all())
            rec["reload_module"] = type(model.model.layers[0].mlp.down_proj).__name__
            rec["reload_weight_type"] = type(model.model.layers[0].mlp.down_proj.weight).__name__
            del model
            # Expected: CUDA trains under bf16 autocast with gradient checkpointing (forward recomputed);
            # CPU trains in fp32 without either unless checkpointing is asked for.
            gc = cuda if opts.get("gradient_checkpointing") is None else opts["gradient_checkpointing"]
            rec["expected"] = {"autocast_bf16": cuda, "gradient_checkpointing": gc}
            rec["ok"] = (rec["reload_finite"] and rec["layer0_weights_changed"] and rec["autocast_bf16_all"] == cuda
                         and (rec["mlp_out_dtypes"] == ["bfloat16"]) == cuda
                         and len(calls) == QAT_STEPS * (2 if gc else 1))
        except Exception as e:  # noqa: BLE001 - recorded
            rec["error"] = error_text(e)
            rec["traceback"] = traceback.format_exc()[-2500:]
        finally:
            QT.train = orig
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        rec["forward_calls"] = rec["forward_calls"][:4]  # a sample; the count is n_forward_calls
        out["runs"].append(rec)
    out["ok"] = all(r["ok"] for r in out["runs"])
    return out


def run_child_json(argv: list[str], timeout: float) -> tuple[dict | None, str | None]:
    """Run this script as a child; its last ``BENCH_GPU_JSON`` line is the result."""
    try:
        p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [l for l in p.stdout.splitlines() if l.startswith("BENCH_GPU_JSON ")]
    if lines:
        return json.loads(lines[-1][len("BENCH_GPU_JSON "):]), None
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return None, f"exit {p.returncode}: {' | '.join(tail)[-800:]}"


# -- wheels ---------------------------------------------------------------------------------------
def prune_bnb_wheel(src: Path, dest_dir: Path) -> Path:
    """Copy bitsandbytes' wheel keeping only the CUDA 13.0 + CPU/XPU libraries (the GPU image's torch
    is cu130); RECORD is rewritten to match, so pip installs it like the original."""
    drop = re.compile(r"libbitsandbytes_(cuda(?!130)\d+|rocm\d+)\.so$")
    dest = Path(dest_dir) / Path(src).name
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            if drop.search(info.filename):
                continue
            data = zi.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                keep = [l for l in data.decode().splitlines() if not drop.search(l.split(",")[0])]
                data = ("\n".join(keep) + "\n").encode()
            zo.writestr(info, data)
    return dest


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_json_arg(ap, EVAL / "gpu" / "bench.json", aliases=("--out",))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="2-layer toy shape (CPU dry run)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--budget", type=float, default=440.0, help="seconds for the whole run; sections that would "
                    "not fit are skipped and recorded as such")
    ap.add_argument("--scheme-timeout", type=float, default=75.0, help="seconds per scheme's bench child")
    ap.add_argument("--qat-timeout", type=float, default=90.0)
    ap.add_argument("--compile-min-left", type=float, default=100.0,
                    help="run the compiled section only with this many seconds left")
    ap.add_argument("--no-qat", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--keep", help="keep the temp folder here (debugging)")
    ap.add_argument("--qat-smoke-child", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--prune-bnb-wheel", nargs=2, metavar=("WHEEL", "DEST_DIR"),
                    help="write a bitsandbytes wheel with only its CUDA 13.0 (+CPU) libraries and exit")
    args = ap.parse_args(argv)

    if args.prune_bnb_wheel:
        print(prune_bnb_wheel(Path(args.prune_bnb_wheel[0]), Path(args.prune_bnb_wheel[1])))
        return 0
    # The GPU machine is offline: fail fast instead of waiting on Hub look-ups (bench's prompt text
    # falls back to repeated ids when WikiText-2 is not local).
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.qat_smoke_child:
        print("BENCH_GPU_JSON " + json.dumps(qat_smoke(args.device, Path(args.qat_smoke_child)), default=str),
              flush=True)
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu for a dry run", file=sys.stderr)
        return 2
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    schemes = [s for s in args.schemes.split(",") if s]
    rep = Report(Path(args.json), {
        "what": "llmq bench of every scheme on a random-weight Llama: speed and memory only (random weights make "
                "quality meaningless, so none is measured)",
        "started_utc": now(), "argv": [sys.executable, *sys.argv], "finished": False,
        "settings": {"batch_sizes": batch_sizes, "prompt_tokens": args.prompt_tokens,
                     "new_tokens": args.new_tokens, "samples": args.samples, "mode": "eager (see compiled)",
                     "budget_s": args.budget, "scheme_timeout_s": args.scheme_timeout,
                     "ratios": "to the first scheme (bf16) at the same batch size"},
        "not_run": NOT_RUN, "schemes": [], "rows": [], "compiled_rows": []})
    rep.data["env"] = environment(args.device)
    rep.write()
    print(json.dumps(rep.data["env"]), flush=True)
    left = lambda: args.budget - rep.elapsed()  # noqa: E731

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # QAT smoke first: short, bounded, and the one check of a never-run CUDA branch.
        if not args.no_qat:
            res, err = run_child_json(["--qat-smoke-child", str(work), "--device", args.device],
                                      timeout=min(args.qat_timeout, max(left() - 60, 10)))
            rep.data["qat_smoke"] = res if res is not None else {"ok": False, "error": err}
            rep.write()
            print("qat_smoke:", json.dumps({k: v for k, v in rep.data["qat_smoke"].items() if k != "runs"}),
                  [(r["scheme"], r["ok"], r.get("error")) for r in rep.data["qat_smoke"].get("runs", [])], flush=True)

        src = work / "src"
        rep.data["source"] = build_source(src, "tiny" if args.tiny else "1b", args.device)
        rep.write()
        print("source:", json.dumps(rep.data["source"]), flush=True)

        rows: list = []
        keep_for_compile = {"bf16", "int8-dynamic"}
        outs: dict[str, Path] = {}
        for scheme in schemes:
            entry: dict = {"scheme": scheme, "ok": False}
            rep.data["schemes"].append(entry)
            if left() < 30:
                entry["skipped"] = f"out of time budget ({left():.0f} s left)"
                rep.write()
                continue
            t0 = time.perf_counter()
            out = work / scheme
            try:
                entry.update(quantize_one(src, scheme, out, args.device))
            except Exception as e:  # noqa: BLE001 - recorded; the next scheme runs
                entry["error"] = error_text(e)
                entry["traceback"] = traceback.format_exc()[-2500:]
                entry["seconds"] = round(time.perf_counter() - t0, 1)
                rep.write()
                print(f"{scheme}: quantize failed: {entry['error']}", flush=True)
                continue
            timeout = max(10.0, min(args.scheme_timeout, left() - 5))
            got, err = bench_rows(f"{out}@eager", args, batch_sizes, timeout)
            for r in got:
                r.model = scheme
            rows += got
            entry.update(ok=err is None and len(got) == len(batch_sizes), bench_timeout_s=round(timeout),
                         rows=len(got), seconds=round(time.perf_counter() - t0, 1))
            if err:
                entry["bench_error"] = err
            rep.data["rows"] = with_ratios(rows)
            rep.write()
            print(f"{scheme}: {json.dumps({k: v for k, v in entry.items() if k != 'traceback'})}", flush=True)
            if scheme in keep_for_compile and not args.no_compile:
                outs[scheme] = out
            else:
                shutil.rmtree(out, ignore_errors=True)

        # Compiled: only with time to spare; batch 1; bf16 first so the ratios have their base.
        crow: list = []
        if args.no_compile:
            rep.data["compiled_skipped"] = "--no-compile"
        elif "bf16" not in outs:
            rep.data["compiled_skipped"] = "no bf16 output to compare against"
        else:
            for scheme in ("bf16", "int8-dynamic"):
                if scheme not in outs:
                    continue
                if left() < args.compile_min_left / (1 if scheme == "bf16" else 2):
                    rep.data.setdefault("compiled_skipped", f"out of time budget at {scheme} ({left():.0f} s left)")
                    break
                share = (left() - 10) / (2 if scheme == "bf16" and "int8-dynamic" in outs else 1)
                got, err = bench_rows(f"{outs[scheme]}@compile", args, (1,), max(10.0, share))
                for r in got:
                    r.model = f"{scheme}@compile"
                crow += got
                if err:
                    rep.data.setdefault("compiled_errors", {})[scheme] = err
                rep.data["compiled_rows"] = with_ratios(crow)
                rep.write()
                print(f"{scheme}@compile: {len(got)} rows {err or ''}", flush=True)
        rep.data["finished"] = True
        rep.data["finished_utc"] = now()
        rep.write()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    from llmq.benchmark import BenchRow, format_table

    print()
    print("| scheme | ok | quantize s | size MB | module | note |\n|---|---|---:|---:|---|---|")
    for e in rep.data["schemes"]:
        note = e.get("skipped") or e.get("error") or e.get("bench_error") or ""
        print(f"| {e['scheme']} | {e['ok']} | {e.get('quantize_s', '')} | {e.get('size_mb', '')} | "
              f"{e.get('module', '')} | {note[:80]} |")
    for key in ("rows", "compiled_rows"):
        if rep.data[key]:
            print()
            print(format_table([BenchRow(**r) for r in rep.data[key]]))
    q = rep.data.get("qat_smoke") or {}
    print(f"\nqat_smoke ok={q.get('ok')}; JSON: {args.json} ({rep.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
