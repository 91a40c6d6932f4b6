"""The README stays a short user README, and no link in it or in docs/ points at a missing file.

Pure Python (no mkdocs): CI also runs `mkdocs build --strict`, which checks anchors and the nav.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))

#: an inline link or image: [text](target) / ![alt](target "title"); text may hold one level of [...]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
#: a reference definition: [label]: target
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links inside code are not links)."""
    out, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)):]:
                fence = None
            continue
        out.append(line)
    return CODE_SPAN.sub("", "\n".join(out))


def relative_links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    targets = LINK.findall(prose) + REF_DEF.findall(prose)
    return [t for t in targets if t and not t.startswith("#") and not SCHEME.match(t) and not t.startswith("//")]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 320, f"README.md has {n} lines; the long form belongs in docs/"


def test_readme_has_no_issue_references():
    hits = re.findall(r"#\d+", README.read_text(encoding="utf-8"))
    assert not hits, f"README.md refers to issues {hits}: say what is true now instead"


def test_docs_exist():
    assert ROOT / "docs" / "index.md" in DOCS


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    missing = []
    for target in relative_links(page):
        file = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not (page.parent / file).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_link_parser_sees_links_and_skips_code(tmp_path):
    text = ("a [x](docs/a.md#b) ![i](img.png \"t\") [`c`](c.md) `[no](code.md)` [u](https://e.org) [h](#top)\n"
            "````markdown\n[no](fence.md)\n```\n[no](inner.md)\n````\n[r]: ref.md\n")
    probe = tmp_path / "probe.md"
    probe.write_text(text, encoding="utf-8")
    assert relative_links(probe) == ["docs/a.md#b", "img.png", "c.md", "ref.md"]
