"""The README's "Which scheme?" section, rendered from the advisor's own tables
(``python -m llmq advise --markdown-table``), so the docs cannot drift from the code."""

from __future__ import annotations

from llmq.advisor import measured, rules


def which_scheme_markdown() -> str:
    lines = ["## Which scheme?", "",
             "`python -m llmq advise --model <id>` answers this for your model and machine before anything is "
             "downloaded (parameters from safetensors headers, Hub metadata, GGUF tensor tables or the config). "
             "It ranks schemes by this decision tree:", "",
             f"> {rules.TREE_TEXT}", "",
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
        lines += ["### Measured on SmolLM2-135M (the 100M-1B band)", "",
                  f"`{q['command']}`", "",
                  "| scheme | size | perplexity change vs fp32 | rule of thumb says |", "|---|---|---|---|"]
        band = rules.size_band(135e6)
        for scheme, r in q["rows"].items():
            loss, _ = rules.expected_loss(scheme, 135e6) if scheme in rules.ROLES else ((0.0, 0.0), "")
            say = f"{loss[0]:g}-{loss[1]:g}%" if loss else "not covered"
            if scheme in rules.ROLES and rules.ROLES[scheme].precision == "4":
                say += f" ({band.verdict})"
            lines.append(f"| {scheme} | {r['size_bytes'] / 1e6:.1f} MB | {r['ppl_change'] * 100:+.2f}% | {say} |")
        lines.append("")
    s = measured.CPU_SPEED
    if s.get("tokens_per_s"):
        base = s["tokens_per_s"].get("fp32")
        lines += ["### Where our measurements contradict the rule of thumb", "",
                  f"Quantization is not a speed-up on CPU. Decode speed, {s['model']}, {s['machine']} "
                  f"(`{s['command']}`, one run):", "",
                  "| scheme | tokens/s | vs fp32 |", "|---|---|---|"]
        for k, v in s["tokens_per_s"].items():
            lines.append(f"| {k} | {v:.2f} | {v / base:.2f}x |" if base else f"| {k} | {v:.2f} | |")
        lines += ["", "bitsandbytes runs on CPU (>= 0.50) but dequantizes on every matmul: pick it for GPU memory, "
                  "not CPU speed. int8-dynamic, the decision tree's CPU pick, was slower than fp32 here too "
                  "(torchao in eager mode): on this machine it buys memory (2.4x smaller than fp32 for "
                  "SmolLM2), not speed. `advise` quotes these numbers next to the CPU candidates.", ""]
    lines += ["Size estimates (`python -m llmq estimate`) match the folders llmq writes for SmolLM2-135M within "
              "0.2% for fp16, int8-dynamic, bnb-int8 and bnb-nf4, and GPTQ/AWQ within 5% on a tiny model "
              "(`pytest tests/advisor/test_estimate.py`; GPTQ takes minutes on SmolLM2 on CPU).", ""]
    return "\n".join(lines)
