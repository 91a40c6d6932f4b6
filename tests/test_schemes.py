import pytest

from llmq.errors import UnknownNameError
from llmq.schemes import BACKENDS, SCHEMES, get_scheme

EXPECTED = {"fp16", "bf16", "int8-dynamic", "bnb-int8", "bnb-nf4", "bnb-fp4", "gptq-int4", "gptq-int8", "gptq-int3", "awq-int4",
            "qat-int4", "qat-8da4w", "qat-w8a8", "qat-int8",
            "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_0",
            "int8-static", "fp8"}


def test_every_family_is_registered():
    assert set(SCHEMES.names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scheme_default_config_is_valid_and_backend_declares_needs(name):
    s = get_scheme(name)
    cfg = s.config()
    b = s.backend_cls()
    assert isinstance(b.needs_calibration, bool) and isinstance(b.runs_in_memory, bool)
    assert b.needs_calibration == name.startswith(("gptq", "awq", "int8-static"))
    assert b.needs_training == name.startswith("qat-")
    if b.requires:
        assert b.extra, "a backend with requirements must name its pip extra"
    if hasattr(cfg, "bits"):
        assert cfg.bits == s.bits


def test_get_scheme_normalises_and_suggests():
    assert get_scheme(" GPTQ-INT4 ").name == "gptq-int4"
    with pytest.raises(UnknownNameError, match="Did you mean 'bnb-nf4'"):
        get_scheme("bnb-nf")


def test_backends_are_lazy_strings_until_used():
    assert set(BACKENDS.names()) == {"cast", "torchao", "bitsandbytes", "gptqmodel", "qat", "gguf", "int8-static",
                                     "compressed-tensors", "fp8"}


def _tiny_meta(name: str) -> dict:
    s = get_scheme(name)
    return {"scheme": name, "backend": s.backend, "bits": s.bits, "config": s.config().to_dict(),
            "versions": {}, "source": {"name": "x/y", "kind": "hub"}}


@pytest.mark.parametrize("name", sorted(SCHEMES.names()))
def test_every_registered_scheme_has_an_estimate_a_role_and_card_facts(name, tiny_model_dir):
    """What a plugin must provide: a scheme missing any of these would silently vanish from
    ``advise`` or print an empty card section."""
    from llmq.advisor import rules
    from llmq.sizing import SizeEstimate
    from llmq.advisor.estimate import estimate_scheme
    from llmq.advisor.params import profile
    from llmq.backends.base import CardFacts

    s = get_scheme(name)
    est = estimate_scheme(profile(str(tiny_model_dir)), name, device="cpu")
    assert isinstance(est, SizeEstimate) and est.bytes > 0 and est.scheme == name
    assert s.precision in ("16", "8", "4", "3") and s.role
    assert set(s.tree_rank) == set(rules.SITUATIONS), "a built-in scheme ranks itself in every situation"
    facts = s.backend_cls().card_facts(_tiny_meta(name), "me/repo")
    assert isinstance(facts, CardFacts) and facts.packages and "me/repo" in facts.python and facts.tags
    assert facts.hardware


def test_registry_ties_schemes_quant_methods_and_roles_together():
    from llmq.advisor import rules
    from llmq.schemes import plugin_for_method, plugins

    assert set(rules.ROLES) == set(SCHEMES.names())  # advise() can no longer drop a scheme
    assert all(set(order) == set(SCHEMES.names()) for order in rules.TREE.values())
    methods = [m for p in plugins() for m in p.quant_methods]
    assert len(methods) == len(set(methods)), "two plugins claim one quant_method"
    for p in plugins():
        for m in p.quant_methods:
            assert plugin_for_method(m) is p
    assert {"gptq", "awq", "bitsandbytes", "torchao"} <= set(methods)
    assert plugin_for_method(None).__name__ == "Backend"  # plain transformers


def test_listing_schemes_imports_no_heavy_package():
    import subprocess
    import sys

    code = ("import sys, llmq.cli.schemes; llmq.cli.schemes.scheme_rows(); from llmq.advisor import rules; rules.TREE; "
            "bad=[m for m in ('torch','transformers','gptqmodel','bitsandbytes','torchao') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
