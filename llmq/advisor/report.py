"""docs/advisor.md's "Which scheme?" section, rendered from the advisor's own tables
(``python -m llmq advise --markdown-table``), so the docs cannot drift from the code."""

from __future__ import annotations

from llmq.advisor import measured, rules
from llmq.advisor.advice import cpu_order, cpu_speed_ratios, cpu_speed_verdict, measured_ppl_changes


def which_scheme_markdown() -> str:
    lines = ["## Which scheme?", "",
             "`python -m llmq advise --model <id>` answers this for your model and machine before anything is "
             "downloaded (parameters from safetensors headers, Hub metadata, GGUF tensor tables or the config). "
             "It ranks schemes by this decision tree:", "",
             f"> {rules.TREE_TEXT}", "",
             "A quantized scheme whose estimated size exceeds bf16's (e.g. fp32 embeddings on a "
             "large-vocabulary model) is marked *avoid* and never recommended.", "",
             f"and this model-size rule of thumb (source: {rules.RULE_SOURCE}):", "",
             "| parameters | rule of thumb | expected 4-bit loss | what `advise` does with 4-bit |",
             "|---|---|---|---|"]
    action = {"<100M": "marks it *avoid*", "100M-1B": "ranks 8-bit first, warns on 4-bit",
              "1B-10B": "offers it when 16-bit does not fit", "10B+": "offers it when 16-bit does not fit"}
    for b in rules.SIZE_BANDS:
        lo, hi = b.four_bit_loss
        lines.append(f"| {b.label} | {b.verdict} | {lo:g}-{hi:g}% | {action[b.label]} |")
    lines += ["", f"8-bit is assumed to cost {rules.EIGHT_BIT_LOSS[0]:g}-{rules.EIGHT_BIT_LOSS[1]:g}% "
              f"({rules.BAND_SOURCES['8']}); `--scheme auto` replaces every assumption with a measurement.", ""]
    q = measured.SMOL_QUALITY
    if q.get("rows"):
        band = rules.size_band(q["params"])
        lines += [f"### Measured on SmolLM2-135M (the {band.label} band)", "",
                  f"`{q['command']}`" + (f" ({q['protocol']})" if q.get("protocol") else "")
                  + (f"; {q['refreshed']}" if q.get("refreshed") else ""), "",
                  "| scheme | size | perplexity change vs fp32 | rule of thumb says |", "|---|---|---|---|"]
        roles = rules.roles()
        for scheme, r in q["rows"].items():
            loss, _ = rules.expected_loss(scheme, q["params"]) if scheme in roles else ((0.0, 0.0), "")
            say = f"{loss[0]:g}-{loss[1]:g}%" if loss else "not covered"
            if scheme in roles and roles[scheme].precision == "4":
                say += f" ({band.verdict})"
            lines.append(f"| {scheme} | {r['size_bytes'] / 1e6:.1f} MB | {r['ppl_change'] * 100:+.2f}% | {say} |")
        lines.append("")
        four, eight = measured_ppl_changes("4"), measured_ppl_changes("8")
        lo, hi = band.four_bit_loss
        if four and min(four) > hi:
            e8 = rules.EIGHT_BIT_LOSS
            lines += [f"At this size 4-bit cost far more perplexity than the rule of thumb's {lo:g}-{hi:g}% "
                      f"(+{min(four):.1f}% to +{max(four):.1f}% here; the rule does not name its metric), which "
                      "backs its advice for this band: prefer 8-bit"
                      + (f" (+{min(eight):.1f}% to +{max(eight):.1f}% here, against the {e8[0]:g}-{e8[1]:g}% "
                         "assumed)." if eight else "."), ""]
    s = measured.CPU_SPEED
    if s.get("rows"):
        lines += ["### Where our measurements contradict the rule of thumb", "",
                  f"Quantization is not simply a speed-up on CPU. {s['model']}, {s['machine']} (`{s['command']}`: "
                  "`llmq bench` of each output against fp32 measured right before it; batch 1, 512-token prompt, "
                  "128 new tokens):", "",
                  "| scheme | runs as | decode vs fp32 | prefill vs fp32 |", "|---|---|---|---|"]
        for k in cpu_order(list(s["rows"])):
            decode, prefill = cpu_speed_ratios(k)
            lines.append(f"| {k} | {s['rows'][k].get('mode', '')} | {decode:.2f}x | "
                         + (f"{prefill:.2f}x |" if prefill is not None else " |"))
        said = {"faster": "faster than fp32 in both phases", "slower": "slower than fp32 in both phases",
                "mixed": "faster in one phase and slower in the other"}
        verdicts = [f"{k} {said[v]}" for k in s["rows"] if (v := cpu_speed_verdict(k))]
        lines += ["", "On this CPU: " + "; ".join(verdicts) + ". `advise` ranks CPU candidates by this table "
                  "(fastest decode first, among those the rule of thumb does not warn against) and quotes it next "
                  "to each one. Speed ratios depend on the CPU (bf16/AMX support above all) and on the model's "
                  "size: rerun the command on yours.", ""]
    lines += ["Size estimates (`python -m llmq estimate`) match the folders llmq writes for SmolLM2-135M within "
              "0.2% for fp16, int8-dynamic, bnb-int8 and bnb-nf4 (`tests/advisor/test_estimate.py`), and within "
              "5% for gptq-int4 and awq-int4 at group size 64 (`tests/acceptance/test_e2e_smollm2.py`); every scheme on a "
              "tiny model within 5%.", ""]
    return "\n".join(lines)
