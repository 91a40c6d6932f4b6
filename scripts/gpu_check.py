"""CUDA smoke test of every scheme: quantize a small random Llama on the GPU, save, reload with
plain transformers on the GPU, and compare logits with the fp32 original.

CI has no GPU, so the CUDA kernels (bitsandbytes, torchao, GPTQModel) are checked with this script
on a GPU machine:

    python scripts/gpu_check.py --json gpu_check.json

Prints a table (scheme, ok, relative logit error, kernel/module type, seconds) and writes the JSON
record (``--json``, or its older name ``--out``; default ./gpu_check.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402

SCHEMES = ["fp16", "bf16", "int8-dynamic", "bnb-int8", "bnb-nf4", "bnb-fp4", "gptq-int4", "gptq-int8", "awq-int4"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    add_json_arg(ap, "gpu_check.json", aliases=("--out",))
    ap.add_argument("--kernel", default=None,
                    help="GPTQModel kernel for reloading GPTQ folders (e.g. marlin); default: transformers' auto")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    import llmq
    from llmq.testing import tiny_llama

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = tiny_llama(Path(tmp) / "src", hidden=512, intermediate=1024, layers=4, heads=8, kv_heads=4)
        ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).cuda().eval()
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src)
        import pydoc_data.topics

        ids = tok(list(pydoc_data.topics.topics.values())[3], return_tensors="pt").input_ids[:, :256].cuda()
        with torch.no_grad():
            ref_logits = ref(ids).logits.float()
        del ref
        for scheme in args.schemes.split(","):
            row = {"scheme": scheme, "ok": False}
            kw = {"calibration": "builtin", "n_samples": 32, "seqlen": 128} if scheme.startswith(("gptq", "awq")) else {}
            t0 = time.perf_counter()
            try:
                qm = llmq.quantize(src, scheme, device="cuda", **kw)
                out = qm.save(Path(tmp) / scheme)
                del qm
                if scheme.startswith("gptq") and args.kernel:
                    model, _ = llmq.load(out, device="cuda", kernel=args.kernel)
                else:
                    model = AutoModelForCausalLM.from_pretrained(out, device_map="cuda").eval()
                with torch.no_grad():
                    logits = model(ids).logits.float()
                err = ((logits - ref_logits).norm() / ref_logits.norm()).item()
                row.update(ok=bool(torch.isfinite(logits).all()), rel_logit_error=round(err, 5),
                           module=type(model.model.layers[0].self_attn.q_proj).__name__,
                           size_bytes=json.loads((out / "llmq.json").read_text())["size_bytes"]["after"])
                del model
            except Exception as e:  # noqa: BLE001 - report every scheme
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                row["traceback"] = traceback.format_exc()[-3000:]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)}
    for pkg in ("transformers", "bitsandbytes", "torchao", "gptqmodel"):
        from llmq.backends.base import package_version

        env[pkg] = package_version(pkg)
    write_record(args.json, {"env": env, "rows": rows})
    print("| scheme | ok | rel. logit error | module | s |\n|---|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['scheme']} | {r['ok']} | {r.get('rel_logit_error', '')} | {r.get('module', r.get('error', ''))[:60]} | {r['seconds']} |")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
