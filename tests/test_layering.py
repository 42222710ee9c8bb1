"""The import graph runs one way: library packages never import the command layer or each other's tops.

Each package's modules are all imported in a fresh interpreter, and the modules that import pulled
in are checked (docs/design.md, "What each package may import").
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# package -> packages it must never import (directly or through anything it imports)
FORBIDDEN = {
    "spul.prompts_store": ("spul.trainer", "spul.service", "spul.models", "spul.cli", "spul.commands",
                           "spul.benchmarks"),
    "spul.trainer": ("spul.service", "spul.cli", "spul.commands", "spul.benchmarks"),
    "spul.service": ("spul.trainer", "spul.cli", "spul.commands", "spul.benchmarks"),
}

PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if info.name.rsplit(".", 1)[-1] != "__main__":
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("spul"))))
"""


@pytest.fixture(scope="module")
def imported() -> dict[str, list[str]]:
    """Every package imported in its own interpreter, all at once (the imports dominate the time)."""
    procs = {
        name: subprocess.Popen([sys.executable, "-c", PROBE, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        for name in FORBIDDEN
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"importing every module of {name} failed:\n{stderr[-3000:]}"
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upwards(imported, package):
    modules = imported[package]
    assert any(m.startswith(package + ".") for m in modules), f"nothing of {package} was imported"
    bad = [m for m in modules if m.startswith(FORBIDDEN[package])]
    assert not bad, f"{package} imports {bad}; see docs/design.md for what each package may import"
