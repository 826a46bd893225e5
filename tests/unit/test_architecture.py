"""The floor plan holds: layers import only downwards, no import cycles, every module
imports on its own, and only the engine (and the outer step it calls) touches θ."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.layers import (
    RULES,
    cycles,
    layer_of,
    module_graph,
    module_name,
    source_files,
    violations,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = source_files(ROOT)
MODULES = [module_name(ROOT, p) for p in FILES]


def test_every_module_belongs_to_a_layer() -> None:
    assert MODULES, "no sources found"
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_layers_import_only_what_their_rule_allows() -> None:
    found = violations(ROOT, FILES)
    assert not found, "\n".join(map(str, found))


def _fake_tree(tmp_path: Path, layer_dir: str, body: str) -> Path:
    path = tmp_path / layer_dir / "bad.py"
    path.parent.mkdir(parents=True)
    for parent in path.relative_to(tmp_path).parents:
        if parent != Path("."):
            (tmp_path / parent / "__init__.py").touch()
    path.write_text(body)
    return path


@pytest.mark.parametrize(("layer_dir", "body", "imported"), [
    ("node/outer", "from node.runtime.core import NodeCore\n", "node.runtime.core"),
    ("node/engine", "def late():\n    import node.mesh.base\n", "node.mesh.base"),
    ("node/mesh", "from ..engine import model\n", "node.engine"),
    ("protocol", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from chain.client import ChainClient\n", "chain.client"),
    ("node/dashboard", "from node import runtime\n", "node.runtime"),
    ("validator", "from node.sim.devnet import Devnet\n", "node.sim.devnet"),
])
def test_a_forbidden_import_is_reported(tmp_path: Path, layer_dir: str, body: str,
                                        imported: str) -> None:
    bad = _fake_tree(tmp_path, layer_dir, body)
    found = violations(tmp_path, [bad])
    assert [v.imported for v in found] == [imported], found
    assert found[0].importer == module_name(tmp_path, bad)


def test_an_allowed_import_is_not_reported(tmp_path: Path) -> None:
    good = _fake_tree(tmp_path, "node/runtime", "from node.engine.base import Engine\n"
                                                "from node.errors import NodeError\n")
    assert violations(tmp_path, [good]) == []


def test_the_rule_names_every_layer_of_the_plan() -> None:
    assert {"protocol", "chain", "node.outer", "node.engine", "node.mesh", "node.runtime",
            "node.dashboard", "validator", "node.sim", "node.cli"} <= set(RULES)


def test_no_import_cycles() -> None:
    assert cycles(module_graph(ROOT, FILES)) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# One interpreter imports the third-party libraries once (torch, web3 and libp2p take
# seconds), then forks a child per module: each child starts with none of our modules
# loaded, so it imports exactly as a fresh interpreter would, in a fraction of the time.
FORK_IMPORTER = r"""
import importlib, json, os, sys, traceback
for lib in ("torch", "numpy", "web3", "eth_tester", "libp2p", "trio", "aiohttp", "rich",
            "msgpack", "coincurve", "prometheus_client", "openskill"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
ours = ("protocol", "chain", "node", "validator")
assert not [m for m in sys.modules if m.split(".")[0] in ours], "preloaded our modules"
failed = {}
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            importlib.import_module(module)
        except BaseException:
            os.write(write, traceback.format_exc()[-3000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed[module] = error or f"exit status {status}"
print(json.dumps(failed))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = [m for m in MODULES if not m.endswith("__main__")]  # scripts run, not import
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FORK_IMPORTER, json.dumps(modules)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n\n".join(f"{m}:\n{err}" for m, err in failed.items())


# writing or reading a model's parameters: only node/engine (and the outer step in
# node/outer it calls) may; protocol's codecs work on tensors they are handed
THETA_CALLS = {"parameters", "named_parameters", "state_dict", "load_state_dict", "no_grad",
               "copy_", "sub_", "add_", "mul_", "requires_grad_"}
MAY_TOUCH_THETA = ("node.engine", "node.outer", "protocol")


def test_only_the_engine_touches_model_parameters() -> None:
    found = []
    for path, module in zip(FILES, MODULES, strict=True):
        if module.startswith(MAY_TOUCH_THETA):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in THETA_CALLS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert found == [], "\n".join(found)


# py-libp2p and the trio it runs on stay behind the Mesh seam: only the libp2p
# implementation's own modules (node/mesh/p2p*.py) import them
NETWORK_LIBS = ("libp2p", "trio", "multiaddr")


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_libp2p_mesh_imports_libp2p_or_trio() -> None:
    found, importers = [], []
    for path, module in zip(FILES, MODULES, strict=True):
        uses = _imported_roots(ast.parse(path.read_text())) & set(NETWORK_LIBS)
        if uses and module.startswith("node.mesh.p2p"):
            importers.append(module)
        elif uses:
            found.append(f"{path.relative_to(ROOT)}: {sorted(uses)}")
    assert found == [], "\n".join(found)
    assert "node.mesh.p2p" in importers  # the rule looks at the right files


def test_imported_roots_sees_every_form_of_import() -> None:
    tree = ast.parse("import trio\nimport a.b as c\nfrom libp2p.x import y\nfrom . import z\n"
                     "def f():\n    from multiaddr import m\n")
    assert _imported_roots(tree) == {"trio", "a", "libp2p", "multiaddr"}
