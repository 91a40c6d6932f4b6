from llmq.fmt import fmt_bytes, gb, gib, human_bytes, mb


def test_byte_formats():
    assert human_bytes(999) == "999 B" and human_bytes(1500) == "1.5 KB" and human_bytes(2.5e9) == "2.5 GB"
    assert human_bytes(None) == "n/a" and mb(None) == "n/a" and mb(1_234_567_890) == "1,234.6 MB"
    assert gb(2.5e9) == "2.50 GB" and gb(135e6) == "135.0 MB" and gib(1024**3) == "1.00 GiB"
    assert fmt_bytes(1500) == "1,500 (1.5 KB)" and fmt_bytes(None) == "not measured"
