import pytest

from llmq.errors import UnknownNameError
from llmq.schemes import BACKENDS, SCHEMES, get_scheme

EXPECTED = {"fp16", "bf16", "int8-dynamic", "bnb-int8", "bnb-nf4", "bnb-fp4", "gptq-int4", "gptq-int8", "gptq-int3", "awq-int4"}


def test_every_family_is_registered():
    assert set(SCHEMES.names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scheme_default_config_is_valid_and_backend_declares_needs(name):
    s = get_scheme(name)
    cfg = s.config()
    b = s.backend_cls()
    assert isinstance(b.needs_calibration, bool) and isinstance(b.runs_in_memory, bool)
    assert b.needs_calibration == name.startswith(("gptq", "awq"))
    if b.requires:
        assert b.extra, "a backend with requirements must name its pip extra"
    if hasattr(cfg, "bits"):
        assert cfg.bits == s.bits


def test_get_scheme_normalises_and_suggests():
    assert get_scheme(" GPTQ-INT4 ").name == "gptq-int4"
    with pytest.raises(UnknownNameError, match="Did you mean 'bnb-nf4'"):
        get_scheme("bnb-nf")


def test_backends_are_lazy_strings_until_used():
    assert set(BACKENDS.names()) == {"cast", "torchao", "bitsandbytes", "gptqmodel"}
