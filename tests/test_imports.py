"""The import graph of proxy/: no cycles, and the shipped proxy never loads the test fake."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.proxyproc import ROOT, base_env

PROXY = ROOT / "proxy"


def _imports(path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, ["proxy" if node.level else "", node.module]))  # proxy/ only
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from proxy import cli`
    return found


def _proxy_graph() -> dict[str, set[str]]:
    modules = {f"proxy.{p.stem}": p for p in PROXY.glob("*.py")}
    return {name: _imports(path) & modules.keys() - {name} for name, path in modules.items()}


def test_proxy_modules_have_no_import_cycle():
    graph = _proxy_graph()
    assert "proxy.cli" in graph and "proxy.launch" in graph
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for dep in sorted(graph[name]):
            assert dep not in path, "import cycle: " + " -> ".join([*path[path.index(dep):], dep])
            if dep not in done:
                visit(dep, [*path, dep])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])


def test_proxy_code_never_imports_the_fake_even_inside_functions():
    offenders = {p.name: sorted(m for m in _imports(p) if m.split(".")[0] == "fakegoogle")
                 for p in PROXY.glob("*.py")}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


CHECK_LOADED = """
import importlib, json, pkgutil, sys
import proxy
names = sorted(f"proxy.{m.name}" for m in pkgutil.iter_modules(proxy.__path__))
for name in names:
    importlib.import_module(name)
from proxy import cli
missing = cli._missing_modules(cli.DEMO_NEEDS)  # the demo command's own check, before it spawns
print(json.dumps({"imported": names, "missing": missing,
                  "fake": sorted(m for m in sys.modules if m.split(".")[0] == "fakegoogle")}))
"""


def test_importing_every_proxy_module_loads_no_fake_module():
    out = subprocess.run([sys.executable, "-c", CHECK_LOADED], cwd=ROOT, env=base_env(),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"proxy.cli", "proxy.embed", "proxy.runcmd", "proxy.launch", "proxy.__main__"} <= set(result["imported"])
    assert result["missing"] == []  # the fake is installed here, so the check did look for it
    assert result["fake"] == []
