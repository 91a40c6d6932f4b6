import pytest

from llmq.cardrender import load_template, template_path
from llmq.errors import LlmqError


def test_load_template_parses_or_names_file_and_line(tmp_path):
    assert "{{" in load_template(template_path())  # llmq's own template parses
    cases = {
        "syntax.md": ("ok\n{% for x in y %}\n{{ x }\n", "syntax.md line 3: unexpected '}'"),
        "unclosed.md": ("{% if a %}never closed\n", "unclosed.md line 1: Unexpected end of template"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(LlmqError, match=msg) as e:
            load_template(tmp_path / name)
        assert "\n" not in str(e.value)
    (tmp_path / "bin.md").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(LlmqError, match="not UTF-8 text"):
        load_template(tmp_path / "bin.md")
    with pytest.raises(LlmqError, match="not found"):
        load_template(tmp_path / "missing.md")
