import pytest

from llmq.backends.bnb import Bnb4bitConfig, BnbInt8Config
from llmq.backends.cast import CastConfig
from llmq.backends.gptqmodel import AWQConfig, GPTQConfig
from llmq.backends.torchao import Int8DynamicConfig
from llmq.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 5}, "bits=5"),
    ({"group_size": 100}, "group_size=100"),
    ({"group_size": 8}, "group_size=8"),
    ({"group_size": 0}, "group_size=0"),
    ({"n_samples": 0}, "n_samples"),
    ({"seqlen": 4}, "seqlen"),
    ({"damp_percent": 1.5}, "damp_percent"),
    ({"desc_act": True}, "exclusive"),
    ({"sym": "yes"}, "sym"),
])
def test_gptq_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GPTQConfig(**kwargs)


def test_gptq_defaults_and_valid_overrides():
    c = GPTQConfig()
    assert (c.bits, c.group_size, c.sym, c.desc_act) == (4, 128, True, False)
    c2 = c.with_overrides(bits=8, group_size=-1, desc_act=True, act_group_aware=False, skip_modules="mlp.down_proj")
    assert (c2.bits, c2.group_size, c2.desc_act, c2.skip_modules) == (8, -1, True, ("mlp.down_proj",))
    assert c.bits == 4  # overrides never mutate the defaults


def test_unknown_override_is_rejected_with_valid_names():
    with pytest.raises(UnknownNameError, match="group_size"):
        GPTQConfig().with_overrides(groupsize=64)


def test_awq_only_4bit_and_needs_groups():
    with pytest.raises(ConfigError, match="bits=8"):
        AWQConfig(bits=8)
    with pytest.raises(ConfigError, match="-1"):
        AWQConfig(group_size=-1)
    with pytest.raises(ConfigError, match="format"):
        AWQConfig(format="marlin")


def test_other_configs_validate():
    with pytest.raises(ConfigError):
        CastConfig(dtype="int8")
    with pytest.raises(ConfigError):
        Bnb4bitConfig(quant_type="int4")
    with pytest.raises(ConfigError):
        Bnb4bitConfig(double_quant="yes")
    with pytest.raises(ConfigError):
        BnbInt8Config(threshold=-1)
    with pytest.raises(ConfigError):
        Int8DynamicConfig(weight_granularity="per_group")
    with pytest.raises(ConfigError, match="skip_modules"):
        Int8DynamicConfig(skip_modules=("",))


def test_config_validation_is_not_assert_based():
    """Validation must survive python -O (asserts are stripped there)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-O", "-c",
                        "from llmq.backends.gptqmodel import GPTQConfig\ntry:\n GPTQConfig(bits=5)\nexcept ValueError:\n raise SystemExit(0)\nraise SystemExit(1)"])
    assert r.returncode == 0


def test_to_dict_is_json_and_hides_calibration_lists():
    import json

    d = GPTQConfig(calibration=["a b c"] * 3).to_dict()
    json.dumps(d)
    assert d["calibration"] == "<3 strings>"
