from llmq.cli import main


def test_a_missing_extra_is_printed_with_its_name(monkeypatch, capsys):
    """rich read ``[gguf]`` in ``pip install 'llmq[gguf]'`` as a style tag and printed ``pip install
    'llmq'``; the CLI's tables print with markup off."""
    from llmq.backends.gguf.plugin import GGUFBackend

    monkeypatch.setattr(GGUFBackend, "missing_packages", classmethod(lambda cls: ["llama-cpp-python"]))
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["schemes"]) == 0
    out = capsys.readouterr().out
    assert "pip install 'llmq[gguf]'" in out and "pip install 'llmq'" not in out
