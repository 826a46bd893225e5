"""Every error the packages define is one `gradmesh` answers with a message and exit 2.

The modules are found by walking the source tree, so a new package, module or
error class is covered without touching this file; an exception that never
leaves its module (control flow) must be named in INTERNAL with the reason.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from node.cli.main import ROOT_ERRORS, main

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "chain", "node", "validator")
SKIP_DIRS = {"node_modules", "__pycache__"}

# "module.Class" -> why the CLI never sees it
INTERNAL = {
    "node.mesh.p2p_blob.PeerFault":
        "one blob source broke the protocol; p2p_transfer catches it and tries the next source",
    "node.mesh.p2p_blob.PeerTooSlow":
        "one blob source too slow for a fetch; p2p_transfer and p2p_swarm catch it and go on",
    "node.mesh.p2p_blob.PeerUnavailable":
        "one blob source cannot serve; p2p_transfer catches it and tries the next source",
}


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if SKIP_DIRS & set(rel.parts) or path.stem == "__main__":  # __main__ runs the CLI
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in module_names():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_the_walk_finds_the_packages_and_their_errors() -> None:
    names = module_names()
    for package in PACKAGES:
        assert package in names
        assert f"{package}.errors" in names
    assert "node.dashboard.errors" in names
    assert not any("node_modules" in n for n in names)
    found = defined_exceptions()
    assert "node.mesh.errors.MeshError" in found
    assert "node.runtime.core.RegistrationError" in found  # errors outside errors.py too
    assert "validator.errors.StateMismatchError" in found


def test_every_package_error_derives_from_a_root_main_catches() -> None:
    found = defined_exceptions()
    stray = sorted(name for name, cls in found.items()
                   if name not in INTERNAL and not issubclass(cls, ROOT_ERRORS))
    assert not stray, f"not under any of {ROOT_ERRORS}: {stray}"


def test_the_allow_list_names_only_real_internal_exceptions() -> None:
    found = defined_exceptions()
    for name in INTERNAL:
        assert name in found, f"{name} no longer exists: drop it from INTERNAL"
        assert not issubclass(found[name], ROOT_ERRORS), f"{name} is caught: drop it"


def test_each_root_is_its_package_root() -> None:
    found = defined_exceptions()
    roots = {name for name, cls in found.items() if cls in ROOT_ERRORS}
    assert roots == {"node.errors.NodeError", "protocol.errors.ProtocolError",
                     "chain.errors.ChainError", "validator.errors.ValidatorError",
                     "node.dashboard.errors.DashboardError"}
    # and a root is not redundant: none derives from another
    for cls in ROOT_ERRORS:
        assert not any(cls is not other and issubclass(cls, other) for other in ROOT_ERRORS)


@pytest.mark.parametrize("root", ROOT_ERRORS, ids=lambda c: c.__name__)
def test_main_answers_each_root_with_exit_2(root: type[Exception],
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import node.cli.main as cli

    def fail(args: object) -> int:
        raise root("something is wrong")

    monkeypatch.setattr(cli, "_run_keygen", fail)  # the parser binds it when main() builds it
    assert main(["keygen", "--key", "unused"]) == 2
    assert capsys.readouterr().err == "gradmesh: error: something is wrong\n"
