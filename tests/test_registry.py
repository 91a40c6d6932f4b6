import sys

import pytest

from llmq.errors import UnknownNameError
from llmq.registry import Registry


def test_lazy_entry_imported_on_first_get_only():
    reg = Registry("thing")
    reg.register("path", "os.path:join")
    assert not reg.is_loaded("path")
    import os.path

    assert reg.get("path") is os.path.join
    assert reg.is_loaded("path")


def test_duplicate_and_bad_lazy_string_raise():
    reg = Registry("thing")
    reg.register("a", "os:getcwd")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "os:getcwd")
    with pytest.raises(ValueError, match="module:attr"):
        reg.register("b", "os.getcwd")


def test_decorator_registration():
    reg = Registry("thing")

    @reg.register("f")
    def f():
        return 1

    assert reg.get("f") is f and "f" in reg and len(reg) == 1


def test_unknown_name_suggests_nearest_and_lists_valid():
    reg = Registry("scheme")
    for n in ("gptq-int4", "awq-int4", "fp16"):
        reg.register(n, "os:getcwd")
    with pytest.raises(UnknownNameError) as e:
        reg.get("gptq-int5")
    msg = str(e.value)
    assert "Did you mean 'gptq-int4'" in msg and "awq-int4, fp16, gptq-int4" in msg
    assert "\n" not in msg


def test_import_llmq_does_not_import_torch_or_backends():
    import subprocess

    code = (
        "import sys, llmq, llmq.schemes, llmq.cli; llmq.cli.build_parser(); "
        "bad=[m for m in ('torch','transformers','gptqmodel','bitsandbytes','torchao') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lazy_exports_import_on_first_use_and_keep_the_object():
    import json

    from llmq.registry import lazy_exports

    ns: dict = {}
    getattr_ = lazy_exports("pkg", {"dumps": "json:dumps"}, ns)
    assert ns == {}
    assert getattr_("dumps") is json.dumps and ns == {"dumps": json.dumps}
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'loads'"):
        getattr_("loads")
