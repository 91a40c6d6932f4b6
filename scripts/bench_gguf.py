"""GGUF targets (issue #10), all rows from one run on the offline demo (SmolLM2-135M-Instruct) plus a
tiny random Gemma-3 as a second architecture:

1. llmq's ``gguf-q8_0``/``gguf-q4_k_m`` (no calibration) vs a reference made by llama.cpp's own tools
   from the same F32 GGUF (the ``llama-quantize`` binary when ``--tools`` points at a llama.cpp build,
   else ``llama_model_quantize`` with default params, which is what that binary calls): same tensor
   types, perplexity within 0.3%.
2. ``gguf-q4_k_m`` with an importance matrix from llmq's calibration windows: Δppl vs fp32.
3. the same perplexity protocol on transformers (fp32) and on llama.cpp (F32 GGUF): agreement.
4. speed, one run: ``llmq bench`` over fp32 transformers (eager) and the F32/Q8_0/Q4_K_M files on
   llama.cpp (batch 1, 512-token prompt, 128 new tokens), then ``llama-bench -p 512 -n 128`` on the
   same files (with ``--tools``), and llmq's eval speed function (``llmq.backends.gguf.runtime.speed``).
5. every scheme's perplexity and file size vs ``estimate_size``.

Perplexity: llmq's protocol (WikiText-2 test, non-overlapping windows), identical protocol strings on
both runtimes. The machine may be shared: compare speeds only as ratios within one run.

    LLAMA_CPP_LIB_PATH=/path/to/llama.cpp/build/bin nice python scripts/bench_gguf.py --tools /path/to/build/bin
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402


def ppl_hf(model_dir, tok, tokens, seqlen, windows):
    import torch
    from transformers import AutoModelForCausalLM

    from llmq.eval.perplexity import perplexity

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    r = perplexity(m, tok, "wikitext2", seqlen=seqlen, limit=windows, tokens=tokens, progress=False)
    return r, m


def llama_bench(tools: Path, f: Path, threads: int, reps: int = 3) -> dict | None:
    """llama-bench with flash attention off (as llmq runs llama.cpp): pp512, tg128 from an empty
    context (llama-bench's default test) and tg128 after 512 tokens (``-d 512``, what llmq bench's
    decode after a 512-token prompt measures)."""
    exe = tools / "llama-bench"
    if not exe.is_file():
        return None
    res = {}
    for extra, key in ((["-p", "512", "-n", "128"], None), (["-p", "0", "-n", "128", "-d", "512"], "decode_tok_s_d512")):
        cmd = [str(exe), "-m", str(f), *extra, "-r", str(reps), "-t", str(threads), "-fa", "0", "-o", "json"]
        for r in json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout):
            res[key or ("prefill_tok_s" if r["n_prompt"] else "decode_tok_s")] = r["avg_ts"]
    res["command"] = (f"llama-bench -m {f.name} -p 512 -n 128 -r {reps} -t {threads} -fa 0; "
                      f"llama-bench -m {f.name} -p 0 -n 128 -d 512 -r {reps} -t {threads} -fa 0")
    return res


def reference_quantize(tools: Path | None, src: Path, dst: Path, ftype: str, imatrix_file: Path | None = None) -> str:
    from llmq.backends.gguf import quantizer as G

    exe = tools / "llama-quantize" if tools else None
    if exe is not None and exe.is_file():
        cmd = [str(exe)] + (["--imatrix", str(imatrix_file)] if imatrix_file else []) + [str(src), str(dst), ftype]
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        return "llama-quantize " + " ".join(Path(c).name for c in cmd[1:])
    G.quantize_file(src, dst, ftype)
    return f"llama_model_quantize(default params, ftype={ftype}) via llama-cpp-python"


def speed_section(args, f32, files) -> dict:
    """One run: ``llmq bench`` over fp32 transformers (the demo, eager) and the .gguf files (llama.cpp,
    batch 1, 128 new tokens) after a 512-token prompt and after a 16-token one, then ``llama-bench``
    on the same files (after 512 tokens and from an empty context), then llmq's eval speed function;
    ratios only within this run."""
    from llmq import benchmark as B
    from llmq.backends.gguf import runtime as llamacpp

    specs = ["demo@eager", str(f32)] + [str(f) for _, f in files]
    sp = {}
    for prompt in (512, 16):
        rows = B.bench(specs, prompt_tokens=prompt, new_tokens=128, batch_sizes=(1,), threads=args.threads,
                       samples=args.samples)
        print(f"prompt {prompt} tokens:\n" + B.format_table(rows))
        sp[f"llmq_bench_prompt{prompt}"] = [r.to_dict() for r in rows]
        sp[f"llmq_bench_prompt{prompt}_command"] = (
            f"llmq bench {' '.join(Path(x).name for x in specs)} --prompt-tokens {prompt} --batch-sizes 1 "
            f"--threads {args.threads} --samples {args.samples}")
        sp[f"fp32_transformers_decode_tok_s_prompt{prompt}"] = rows[0].decode_tok_s
        for (label, _), row in zip((("F32", f32), *files), rows[1:]):
            d = sp.setdefault(label, {})
            d[f"llmq_bench_prompt{prompt}"] = {"prefill_tok_s": row.prefill_tok_s, "decode_tok_s": row.decode_tok_s,
                                               "decode_over_fp32_transformers": row.decode_tok_s / rows[0].decode_tok_s}
    for label, f in (("F32", f32), *files):
        d = sp[label]
        ref = llama_bench(args.tools, f, args.threads) if args.tools else None
        d["llama_bench"] = ref
        d["llmq_eval_speed"] = llamacpp.speed(f, threads=args.threads).to_dict()
        if ref:
            d["decode_ratio_llmq_bench_over_llama_bench_d512"] = (d["llmq_bench_prompt512"]["decode_tok_s"]
                                                                   / ref["decode_tok_s_d512"])
            d["decode_ratio_llmq_bench_prompt16_over_llama_bench_tg128"] = (d["llmq_bench_prompt16"]["decode_tok_s"]
                                                                             / ref["decode_tok_s"])
    q8 = sp["Q8_0 (llmq)"]
    sp["q8_0_decode_over_fp32_transformers"] = {p: q8[f"llmq_bench_prompt{p}"]["decode_over_fp32_transformers"]
                                                for p in (512, 16)}
    return sp


def print_speed(sp: dict) -> None:
    for p in (512, 16):
        print(f"after a {p}-token prompt: fp32 transformers decode {sp[f'fp32_transformers_decode_tok_s_prompt{p}']:.1f}"
              f" tok/s; Q8_0 decode / fp32: {sp['q8_0_decode_over_fp32_transformers'][p]:.2f}x (target >= 7)")
    for k in ("F32", "Q8_0 (llmq)", "Q4_K_M (llmq)"):
        m512, m16, r = sp[k]["llmq_bench_prompt512"], sp[k]["llmq_bench_prompt16"], sp[k]["llama_bench"]
        rb = (f" | llama-bench pp512 {r['prefill_tok_s']:.0f} tg128 {r['decode_tok_s']:.1f} "
              f"tg128@d512 {r['decode_tok_s_d512']:.1f}") if r else ""
        print(f"{k:14s} llmq bench prefill {m512['prefill_tok_s']:.0f} decode {m512['decode_tok_s']:.1f} "
              f"(16-token prompt: {m16['decode_tok_s']:.1f}){rb}")
    q8 = sp["Q8_0 (llmq)"]
    if q8.get("llama_bench"):
        print(f"Q8_0 decode llmq bench / llama-bench, after 512 tokens: "
              f"{q8['decode_ratio_llmq_bench_over_llama_bench_d512']:.3f}; from (nearly) empty context: "
              f"{q8['decode_ratio_llmq_bench_prompt16_over_llama_bench_tg128']:.3f} (target 0.9-1.1)")


def speed_only(args, src, tok, work) -> int:
    """Tool rows (llama-quantize types, llama-bench) added to an existing report, from one run."""
    from llmq.backends.gguf import quantizer as G

    report = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    try:
        f32 = work / "smollm2-f32.gguf"
        G.convert(src, f32, "f32")
        files, tools_types = [], {}
        import llmq

        for scheme in ("gguf-q8_0", "gguf-q4_k_m"):
            ft = G.SCHEMES[scheme]
            # llmq's own output: the run pipeline (llmq.quantize(...).save(), as `llmq run` does)
            out = llmq.quantize(None, scheme, threads=args.threads).save(work / f"llmq-{scheme}")
            (path,) = out.glob("*.gguf")
            ref = work / f"ref-{ft}.gguf"
            how = reference_quantize(args.tools, f32, ref, ft)
            tools_types[scheme] = {"reference": how, "same_tensor_types": G.tensor_types(ref) == G.tensor_types(path),
                                   "identical_bytes": ref.read_bytes() == path.read_bytes(), "llmq_file": path.name}
            files.append((f"{ft} (llmq)", path))
        report["speed"] = speed_section(args, f32, files)
        report["tools_reference"] = tools_types
        report["speed_run"] = {"tools": str(args.tools), "llama_cpp_lib": os.environ.get("LLAMA_CPP_LIB_PATH"),
                               "llama_cpp_python": G.versions().get("llama-cpp-python"),
                               "threads": args.threads, "shared_machine": args.shared,
                               "command": "python scripts/bench_gguf.py " + " ".join(sys.argv[1:])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_record(args.json, report)  # command, date and machine: this speed run's
    print_speed(report["speed"])
    print(json.dumps(report["tools_reference"], indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tools", type=Path, default=None, help="folder with llama-quantize / llama-bench binaries")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--samples", type=int, default=3, help="llmq bench: timed runs per model after one warm-up")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the speed rows and the llama-quantize tensor-type check; merged into --json")
    ap.add_argument("--shared", action=argparse.BooleanOptionalAction, default=True,
                    help="record whether other jobs shared the machine (--no-shared for a quiet window)")
    add_json_arg(ap, aliases=("--out",))
    args = ap.parse_args()
    os.environ.setdefault("LLMQ_DATA_DIR", "/work/shared/data")

    from transformers import AutoTokenizer

    from llmq.advisor.params import profile as make_profile
    from llmq.backends.gguf import plugin as P
    from llmq.backends.gguf import quantizer as G
    from llmq.eval.perplexity import gguf_perplexity, tokenize
    from llmq.models import resolve_model

    import torch

    # one thread count for both runtimes (on an oversubscribed machine 1 thread wastes no time spinning)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    src_model = resolve_model(None)
    src = src_model.local_dir()
    tok = AutoTokenizer.from_pretrained(src)
    tokens = tokenize(tok, "wikitext2")
    work = Path(tempfile.mkdtemp(prefix="llmq-bench-gguf-"))
    report: dict = {"model": src_model.name, "source_folder": str(src),
                    "threads": args.threads, "versions": G.versions(),
                    "llama_cpp_lib": os.environ.get("LLAMA_CPP_LIB_PATH", "llama-cpp-python wheel"),
                    "tools": str(args.tools) if args.tools else None, "shared_machine": args.shared}
    rows = []

    def ppl_gguf(f):
        return gguf_perplexity(f, tok, "wikitext2", seqlen=args.seqlen, limit=args.windows, tokens=tokens,
                                   threads=args.threads)

    if args.speed_only:
        return speed_only(args, src, tok, work)
    try:
        # -- fp32 on transformers, F32 GGUF on llama.cpp: same protocol -----------------------
        fp32, hf_model = ppl_hf(src, tok, tokens, args.seqlen, args.windows)
        report["protocol"] = fp32.protocol
        f32 = work / "smollm2-f32.gguf"
        t = time.perf_counter()
        conv = G.convert(src, f32, "f32")
        report["convert_s"] = time.perf_counter() - t
        report["converter"] = conv["converter"]
        p_f32 = ppl_gguf(f32)
        assert p_f32.protocol == fp32.protocol, (p_f32.protocol, fp32.protocol)
        report["fp32_transformers_ppl"] = fp32.value
        report["f32_llamacpp_ppl"] = p_f32.value
        report["runtime_agreement_pct"] = 100 * (p_f32.value / fp32.value - 1)
        rows.append(("fp32 (transformers)", fp32.value, None, None, sum(f.stat().st_size for f in Path(src).glob("*.safetensors"))))
        rows.append(("F32 GGUF (llama.cpp)", p_f32.value, None, None, f32.stat().st_size))

        # -- targets 1: llmq vs llama.cpp's own tools, no calibration ---------------------------
        report["targets"] = {}
        for scheme in ("gguf-q8_0", "gguf-q4_k_m"):
            ft = G.SCHEMES[scheme]
            ref = work / f"ref-{ft}.gguf"
            how = reference_quantize(args.tools, f32, ref, ft)
            res = G.quantize_model(src, work / f"llmq-{scheme}", G.config_for(scheme, threads=args.threads),
                                   name=f"SmolLM2-135M-Instruct-{ft}")
            t_ref, t_llmq = G.tensor_types(ref), G.tensor_types(res.path)
            same_bytes = ref.read_bytes() == res.path.read_bytes()
            p_ref = ppl_gguf(ref)
            # byte-identical files score identically: skip the second llama.cpp pass on a busy machine
            p_llmq = p_ref if same_bytes else ppl_gguf(res.path)
            report["targets"][scheme] = {
                "reference": how, "same_tensor_types": t_ref == t_llmq,
                "type_counts": G.type_counts(t_llmq), "reference_ppl": p_ref.value, "llmq_ppl": p_llmq.value,
                "ppl_diff_pct": 100 * (p_llmq.value / p_ref.value - 1), "identical_bytes": same_bytes,
                "llmq_ppl_measured_separately": not same_bytes,
                "bytes": res.path.stat().st_size, "quantize_s": res.record["timings"],
            }
            rows.append((f"{scheme} reference ({how.split('(')[0].split(' ')[0]})", p_ref.value, None, None, ref.stat().st_size))
            rows.append((f"{scheme} llmq", p_llmq.value, None, None, res.path.stat().st_size))

        # -- target 2: calibrated Q4_K_M ---------------------------------------------------------
        t = time.perf_counter()
        cfg = G.config_for("gguf-q4_k_m", calibration="wikitext2", n_samples=args.n_samples,
                           seqlen=args.calib_seqlen, threads=args.threads)
        cal = G.quantize_model(src, work / "llmq-q4km-imatrix", cfg, name="SmolLM2-135M-Instruct-Q4_K_M-imatrix")
        p_cal = ppl_gguf(cal.path)
        report["targets"]["gguf-q4_k_m+imatrix"] = {
            "calibration": cal.record["calibration"], "ppl": p_cal.value,
            "delta_vs_fp32_pct": 100 * (p_cal.value / fp32.value - 1),
            "uncalibrated_delta_pct": 100 * (report["targets"]["gguf-q4_k_m"]["llmq_ppl"] / fp32.value - 1),
            "type_counts": cal.record["tensor_types"], "bytes": cal.path.stat().st_size, "wall_s": time.perf_counter() - t,
        }
        rows.append(("gguf-q4_k_m + imatrix (llmq)", p_cal.value, None, None, cal.path.stat().st_size))

        # -- every scheme: ppl, size vs estimate --------------------------------------------------
        prof = make_profile(str(src))
        report["schemes"] = {}
        for scheme, ft in G.SCHEMES.items():
            f = work / f"all-{ft}.gguf"
            if scheme in report["targets"]:  # the reference file of target 1 is this very file
                f = work / f"ref-{ft}.gguf"
                p = type("P", (), {"value": report["targets"][scheme]["reference_ppl"]})
            else:
                G.quantize_file(f32, f, ft, threads=args.threads)
                p = ppl_gguf(f)
            est = P.estimate_size(prof, scheme)
            report["schemes"][scheme] = {"ppl": p.value, "delta_vs_fp32_pct": 100 * (p.value / fp32.value - 1),
                                         "bytes": f.stat().st_size, "estimate_bytes": est.bytes,
                                         "estimate_error_pct": 100 * (est.bytes / f.stat().st_size - 1),
                                         "type_counts": G.type_counts(G.tensor_types(f))}

        # -- speed ---------------------------------------------------------------------------------
        if not args.skip_speed:
            report["speed"] = speed_section(args, f32, (
                ("Q8_0 (llmq)", work / "llmq-gguf-q8_0" / "SmolLM2-135M-Instruct-Q8_0.gguf"),
                ("Q4_K_M (llmq)", work / "llmq-gguf-q4_k_m" / "SmolLM2-135M-Instruct-Q4_K_M.gguf")))
        del hf_model

        # -- second architecture: tiny random Gemma-3 ---------------------------------------------
        from llmq.testing_gguf import tiny_model

        g_src = tiny_model(work / "tiny-gemma3", "gemma3", tokenizer=tok)
        g_f32 = work / "gemma3-f32.gguf"
        G.convert(g_src, g_f32, "f32")
        g_tokens = tokens
        g_hf, _ = ppl_hf(g_src, tok, g_tokens, 256, 4)
        g_ll = gguf_perplexity(g_f32, tok, "wikitext2", seqlen=256, limit=4, tokens=g_tokens, threads=args.threads)
        g = {"architecture": "Gemma3ForCausalLM (tiny random: hidden 256, 2 layers)",
             "protocol": g_hf.protocol, "transformers_fp32_ppl": g_hf.value, "llamacpp_f32_ppl": g_ll.value,
             "runtime_agreement_pct": 100 * (g_ll.value / g_hf.value - 1), "schemes": {}}
        for scheme in ("gguf-q8_0", "gguf-q4_k_m"):
            ft = G.SCHEMES[scheme]
            ref = work / f"g-ref-{ft}.gguf"
            how = reference_quantize(args.tools, g_f32, ref, ft)
            res = G.quantize_model(g_src, work / f"g-llmq-{scheme}", G.config_for(scheme, threads=args.threads))
            pr = gguf_perplexity(ref, tok, "wikitext2", seqlen=256, limit=4, tokens=g_tokens, threads=args.threads)
            pl = gguf_perplexity(res.path, tok, "wikitext2", seqlen=256, limit=4, tokens=g_tokens,
                                     threads=args.threads)
            g["schemes"][scheme] = {"reference": how,
                                    "same_tensor_types": G.tensor_types(ref) == G.tensor_types(res.path),
                                    "reference_ppl": pr.value, "llmq_ppl": pl.value,
                                    "ppl_diff_pct": 100 * (pl.value / pr.value - 1)}
        report["gemma3_tiny"] = g
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = time.perf_counter() - t_all

    write_record(args.json, report, quiet=True)
    print(f"\n{report['model']}  ({report['protocol']})")
    print(f"{'row':44s} {'ppl':>8s} {'Δ fp32':>8s} {'MB':>8s}")
    for name, p, _, _, size in rows:
        print(f"{name:44s} {p:8.3f} {100 * (p / fp32.value - 1):+7.2f}% {size / 1e6:8.1f}")
    for s, r in report["schemes"].items():
        print(f"{s + ' (from the same F32)':44s} {r['ppl']:8.3f} {r['delta_vs_fp32_pct']:+7.2f}% {r['bytes'] / 1e6:8.1f}"
              f"  estimate {r['estimate_error_pct']:+.1f}%")
    for s, r in report["targets"].items():
        if "same_tensor_types" in r:
            print(f"target {s}: same types {r['same_tensor_types']}, ppl diff {r['ppl_diff_pct']:+.3f}% ({r['reference']})")
    c = report["targets"]["gguf-q4_k_m+imatrix"]
    print(f"target gguf-q4_k_m+imatrix: Δppl {c['delta_vs_fp32_pct']:+.2f}% (uncalibrated {c['uncalibrated_delta_pct']:+.2f}%)")
    if "speed" in report:
        print_speed(report["speed"])
    g = report["gemma3_tiny"]
    print(f"gemma3 tiny: runtimes agree {g['runtime_agreement_pct']:+.3f}%; " + "; ".join(
        f"{s}: same types {r['same_tensor_types']}, ppl diff {r['ppl_diff_pct']:+.3f}%" for s, r in g["schemes"].items()))
    print(f"wrote {args.json} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
