"""The pure-mode modules (``gateway._fast.pure_mode``): compiled, current, and equal to their twin.

Each listed module is one ``.py`` compiled with the ``.pxd`` beside it; the
interpreted ``.py`` is its twin. A missing or stale build would silently run
interpreted (slower, and not what the benchmarks measured), so these tests check
that every compiled module really loaded and is not older than its source, that
``setup.py`` compiles exactly the listed modules, that the twin's classes accept
exactly the attributes the ``.pxd`` declares, and that the twin passes the same
behavioural tests as the compiled modules (run again with
``GATEWAY_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from gateway._fast import pure_mode

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORCED_TWIN = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
# The tests that exercise these modules' classes, run once more against the twin.
TWIN_TESTS = [
    "tests/test_protocol.py",
    "tests/test_core_units.py",
    "tests/test_timers.py",
    "tests/test_express.py",
    "tests/test_express_parity.py",
    "tests/test_http_backend.py",
]
compiled_only = pytest.mark.skipif(FORCED_TWIN, reason="GATEWAY_NO_EXTENSIONS=1 forces the pure-Python twin")


def _declared(pxd: pathlib.Path) -> dict[str, set[str]]:
    """Class name -> attribute names declared for it in a ``.pxd``."""
    classes: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in pxd.read_text().splitlines():
        head = re.match(r"cdef class (\w+)(:?)", line)
        if head:
            current = classes.setdefault(head.group(1), set()) if head.group(2) else None
            continue
        attr = re.match(r"    cdef (?:public |readonly )?[\w.]+ (\w+)$", line)
        if attr and current is not None:
            current.add(attr.group(1))
    return classes


@compiled_only
@pytest.mark.parametrize("name", pure_mode.MODULES)
def test_compiled_module_loaded(name: str) -> None:
    module = importlib.import_module(name)
    assert pure_mode.compiled(module), f"{name} runs interpreted: build it (pip install -e . / make build)"


@compiled_only
@pytest.mark.parametrize("name", pure_mode.MODULES)
def test_compiled_module_is_not_older_than_its_source(name: str) -> None:
    module = importlib.import_module(name)
    built = pathlib.Path(module.__file__ or "")
    leaf = name.rpartition(".")[2]
    for source in (built.parent / f"{leaf}.py", built.parent / f"{leaf}.pxd"):
        assert source.stat().st_mtime <= built.stat().st_mtime, f"{source.name} changed after it was compiled: make build"


def test_setup_compiles_exactly_the_listed_modules() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PURE_MODE" for t in node.targets)
    )
    assert tuple(listed) == pure_mode.MODULES


@pytest.mark.parametrize("name", pure_mode.MODULES)
def test_twin_classes_take_the_attributes_the_pxd_declares(name: str) -> None:
    """The compiled class refuses an undeclared attribute; the twin must too (``__slots__``)."""
    source = ROOT / (name.replace(".", "/") + ".py")
    declared = _declared(source.with_suffix(".pxd"))
    assert declared, f"{source.with_suffix('.pxd').name} declares no class"
    code = (
        "import importlib, json, sys; m = importlib.import_module(sys.argv[1]);"
        "print(json.dumps({c: list(getattr(m, c).__slots__) for c in sys.argv[2:]}))"
    )
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code, name, *declared], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    slots = {cls: set(names) for cls, names in __import__("json").loads(out.stdout).items()}
    assert slots == declared


@pytest.mark.parametrize(("switch", "pyx_compiled"), [("GATEWAY_NO_EXTENSIONS", "False"), ("GATEWAY_PURE_MODE_SOURCES", "True")])
def test_switches_load_every_module_from_its_source(switch: str, pyx_compiled: str) -> None:
    """Both switches interpret the pure-mode modules; only GATEWAY_NO_EXTENSIONS also the .pyx ones."""
    if switch == "GATEWAY_PURE_MODE_SOURCES" and FORCED_TWIN:
        pytest.skip("GATEWAY_NO_EXTENSIONS=1 forces the pure-Python twin")
    code = (
        "import importlib, sys; import gateway._fast as fast; from gateway._fast import pure_mode;"
        "print(fast.USING_EXTENSIONS, *[pure_mode.compiled(importlib.import_module(n)) for n in pure_mode.MODULES])"
    )
    env = {**os.environ, switch: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [pyx_compiled] + ["False"] * len(pure_mode.MODULES)


@compiled_only
@pytest.mark.timeout(600)
def test_the_twin_passes_the_same_tests() -> None:
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TWIN_TESTS]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=590)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert re.search(r"\d+ passed", out.stdout)
    assert " failed" not in out.stdout
