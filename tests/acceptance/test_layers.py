"""The layer rule (docs/architecture.md): every import in ``llmq/`` points down or sideways, never up,
and no two modules import each other through any chain.

Every import is read with ``ast``: module-level, inside functions, under ``TYPE_CHECKING``, and the
lazy ``"llmq.module:attr"`` strings the registries and ``lazy_exports`` import on first use. A new
module must be given a layer in ``LAYERS`` (the test fails until it is), so the rule is decided when
the module is written, not discovered later.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "llmq"

#: layer of each module or package prefix (the longest matching prefix wins); lower never imports higher
LAYERS = {
    # L0 foundations: errors, the registry, formatting, the machine, the Hub, files and output folders, checks
    "llmq.errors": 0, "llmq.registry": 0, "llmq.fmt": 0, "llmq.hardware": 0, "llmq.hub": 0, "llmq.io": 0,
    "llmq.outdir": 0, "llmq.owners": 0, "llmq.safety": 0, "llmq.version": 0, "llmq.weightfiles": 0,
    # L1 model and data plumbing
    "llmq.config": 1, "llmq.data": 1, "llmq.calibration": 1, "llmq.models": 1, "llmq.gguf_cache": 1, "llmq.sizing": 1, "llmq.meta": 1,
    "llmq.testing": 1, "llmq.testing_gguf": 1, "llmq.streaming": 1, "llmq.cost": 1,
    # L2 the scheme plugins, each owning its runtime
    "llmq.backends": 2, "llmq.fastpath": 2,
    # compressed-tensors (the format vLLM serves: its writer and loader) and the fp8 scheme built on it
    "llmq.backends.compressed": 2, "llmq.backends.fp8": 2, "llmq.backends.exports": 2,
    # L3 the registry of plugins
    "llmq.schemes": 3,
    # L4 the library's verbs
    "llmq.core": 4, "llmq.verify": 4, "llmq.eval": 4, "llmq.advisor": 4, "llmq.benchmark": 4, "llmq.publish": 4,
    "llmq.modelcard": 4, "llmq.cardrender": 4, "llmq.testing_archs": 4, "llmq.advisor.serving": 4,
    # L5 pipelines
    "llmq.pipeline": 5,
    # L6 the command line and the package's lazy public surface
    "llmq.cli": 6, "llmq.__main__": 6, "llmq": 6,
}
#: within L4: the advisor reasons about schemes and never runs them
FORBIDDEN = {"llmq.advisor": ("llmq.core", "llmq.eval", "llmq.pipeline", "llmq.benchmark", "llmq.publish")}
LAZY = re.compile(r"^(llmq(?:\.\w+)*):\w+$")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(mod: str) -> int:
    keys = [k for k in LAYERS if mod == k or mod.startswith(k + ".")]
    if not keys:
        raise KeyError(mod)
    return LAYERS[max(keys, key=len)]


def resolve(name: str) -> str | None:
    """The llmq module an imported dotted name refers to (``llmq.eval.api.evaluate`` -> ``llmq.eval.api``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path) -> list[tuple[str, int]]:
    """``(imported llmq module, line)`` for every import and lazy import string in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "llmq"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llmq":
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY.match(node.value):
            out.append((LAZY.match(node.value).group(1), node.lineno))
    return [(m, line) for name, line in out if (m := resolve(name))]


GRAPH = {mod: imports(path) for mod, path in MODULES.items()}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if not any(m == k or m.startswith(k + ".") for k in LAYERS)]
    assert missing == [], f"give these modules a layer in tests/acceptance/test_layers.py and docs/architecture.md: {missing}"


def test_no_import_points_up():
    up = [f"{MODULES[a].relative_to(ROOT.parent)}:{line} imports {b} (L{layer(a)} -> L{layer(b)})"
          for a, edges in GRAPH.items() for b, line in edges if layer(b) > layer(a)]
    assert up == [], "\n".join(up)


@pytest.mark.parametrize("low,banned", FORBIDDEN.items())
def test_forbidden_sideways_imports(low, banned):
    bad = [f"{a}:{line} imports {b}" for a, edges in GRAPH.items() if a == low or a.startswith(low + ".")
           for b, line in edges if any(b == x or b.startswith(x + ".") for x in banned)]
    assert bad == [], "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: every component is one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in GRAPH[v]:
            if w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_module_is_huge():
    """Long modules hide their structure: split by responsibility past ~450 lines."""
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 470}
    assert big == {}, big


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a plugin importing the registry above it is reported."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from llmq.schemes import get_scheme\n    return 'llmq.cli.run:add_run'\n")
    found = [m for m, _ in imports(f)]
    assert found == ["llmq.schemes", "llmq.cli.run"]
    assert layer("llmq.backends.torchao") < layer(found[0]) < layer(found[1])


def test_tests_mirror_the_package():
    """``tests/`` mirrors ``llmq/`` path for path: ``tests/a/test_b.py`` tests ``llmq/a/b.py`` (or the
    package ``llmq/a/b/``; ``tests/a/test_a.py`` tests ``llmq/a/__init__.py``). Whole-product suites
    live in ``tests/acceptance/``, the benchmark scripts' helpers in ``tests/scripts/``."""
    tests = ROOT.parent / "tests"
    stray = []
    for t in sorted(tests.rglob("test_*.py")):
        rel = t.relative_to(tests)
        if rel.parts[0] in ("acceptance", "scripts"):
            continue
        folder, name = ROOT.joinpath(*rel.parts[:-1]), rel.stem.removeprefix("test_")
        if not ((folder / f"{name}.py").is_file() or (folder / name).is_dir()
                or (folder.name == name and (folder / "__init__.py").is_file())):
            stray.append(str(rel))
    assert stray == [], f"tests without a module of the same path in llmq/: {stray}"
