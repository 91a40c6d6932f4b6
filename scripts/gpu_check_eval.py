"""CUDA check of the evaluator (CI has no GPU): a tiny random Llama vs its bnb-nf4 (else fp16) copy, compared on
the GPU (perplexity, KLD, two task shapes, speed, report files), and shared-context log-likelihood
scoring vs one-sequence-at-a-time on CUDA. Writes the JSON record to ``--json`` (default
$OUT/eval_gpu_check.json, or ./eval_gpu_check.json without $OUT).

    PYTHONPATH=. python scripts/gpu_check_eval.py
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _record import add_json_arg, write_record  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_arg(ap, pathlib.Path(os.environ.get("OUT", ".")) / "eval_gpu_check.json")
    args = ap.parse_args()

    import pydoc_data.topics
    import torch

    import llmq
    from llmq.eval import compare
    from llmq.eval.loglik import loglikelihood
    from llmq.testing import tiny_llama

    t0 = time.time()
    d = pathlib.Path(tempfile.mkdtemp())
    src = tiny_llama(d / "tiny")
    try:  # bnb-nf4 when bitsandbytes is installed there, else an fp16 cast
        scheme = "bnb-nf4"
        q = llmq.quantize(str(src), scheme, device="cuda").save(d / scheme)
    except llmq.LlmqError:
        scheme = "fp16"
        q = llmq.quantize(str(src), scheme, device="cuda").save(d / scheme)
    (d / "t.txt").write_text("\n".join(list(pydoc_data.topics.topics.values())[:40]))
    rows = [{"query": "Question: what does sort do?", "choices": ["it sorts", "a dict", "nothing", "keys"],
             "gold": i % 4} for i in range(12)]
    (d / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "lm.jsonl").write_text("\n".join(json.dumps({"context": "The list type", "continuation": "is mutable"})
                                          for _ in range(6)))
    r = compare(str(src), str(q), ppl=str(d / "t.txt"), tasks=[str(d / "mc.jsonl"), str(d / "lm.jsonl")], limit=6,
                seqlen=256, device="cuda", out_dir=str(d / "rep"), max_ppl_increase="50%", max_kld=1.0,
                progress=False)
    m, tok = llmq.load(src, device="cuda")
    reqs = [("Question: what is a list?\nAnswer:", " " + c) for c in ["a sequence", "b", "the dict type, mapping"]]
    reqs += [("Q: x?", " " + c) for c in ["yes", "no"]]
    a = loglikelihood(m, tok, reqs, progress=False)
    b = loglikelihood(m, tok, reqs, share_context=False, batch_size=1, progress=False)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "scheme": scheme,
           "shared_vs_single_max_abs_logprob_diff": max(abs(x.logprob - y.logprob) for x, y in zip(a, b)),
           "greedy_equal": all(x.greedy == y.greedy for x, y in zip(a, b)),
           "gate": r["gate"]["verdict"], "kld": r["quantized"]["kld"],
           "ppl": [r["original"]["perplexity"]["value"], r["quantized"]["perplexity"]["value"]],
           "tasks_quantized": {k: v["acc"] for k, v in r["quantized"]["tasks"].items()},
           "speed_quantized": [r["quantized"]["prefill_tokens_per_s"], r["quantized"]["decode_tokens_per_s"]],
           "param_memory": [r["original"]["param_memory_bytes"], r["quantized"]["param_memory_bytes"]],
           "files": sorted(os.listdir(d / "rep")), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(write_record(args.json, out), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
