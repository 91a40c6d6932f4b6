"""The docs' "Which scheme?" section (docs/advisor.md) is rendered from the advisor's tables and measured numbers."""

from __future__ import annotations

from llmq.advisor import measured, report, rules


def test_section_follows_the_tables(monkeypatch):
    md = report.which_scheme_markdown()
    for b in rules.SIZE_BANDS:
        assert f"| {b.label} | {b.verdict} |" in md
    assert rules.TREE_TEXT in md and rules.RULE_SOURCE in md


def test_measured_rows_appear_with_their_command(monkeypatch):
    monkeypatch.setitem(measured.CPU_SPEED, "rows", {"bnb-nf4": {"decode_x": 0.4, "prefill_x": 1.2, "mode": "eager"},
                                                     "gguf-q8_0": {"decode_x": 3.9, "prefill_x": 0.9, "mode": "llama.cpp"}})
    monkeypatch.setattr(measured, "SMOL_QUALITY", {"command": "python scripts/x.py", "params": 134_515_008, "rows": {
        "bnb-nf4": {"size_bytes": 111_879_761, "ppl_change": 0.06}}})
    md = report.which_scheme_markdown()
    assert "| bnb-nf4 | 111.9 MB | +6.00% | 2-5% (prefer 8-bit) |" in md
    assert "| gguf-q8_0 | llama.cpp | 3.90x | 0.90x |\n| bnb-nf4 | eager | 0.40x | 1.20x |" in md  # fastest first
    assert "bnb-nf4 faster in one phase and slower in the other" in md
    assert "`python scripts/x.py`" in md and measured.CPU_SPEED["command"] in md


def test_docs_section_is_the_generated_one():
    """docs/advisor.md's "Which scheme?" section is `python -m llmq advise --markdown-table`, verbatim."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "advisor.md").read_text()
    assert report.which_scheme_markdown().strip() in page, "regenerate it: python -m llmq advise --markdown-table"
