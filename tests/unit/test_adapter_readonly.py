"""Code-level proof that engine_adapter is read-only and stays light.

Parses every engine_adapter/*.py with ast: no Hazelcast write/lock/mutation method is referenced
(a ``.set()`` / ``.clear()`` is allowed only on attributes the same module assigns a
``threading.Event()``), no SQL, and only stdlib / hazelcast / orjson / engine_adapter / obf_contract
imports. The runtime check
confirms importing the adapter loads no worker module, numpy, numba, matplotlib nor rich.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ADAPTER_DIR = Path(__file__).resolve().parents[2] / "engine_adapter"
SOURCES = sorted(ADAPTER_DIR.glob("*.py"))

# Every mutating / locking operation of IMap and the other Hazelcast proxies the client offers.
WRITE_METHODS = frozenset({
    "put", "put_all", "put_if_absent", "put_transient", "try_put", "set", "set_all", "set_ttl",
    "replace", "replace_if_same", "remove", "remove_if_same", "remove_all", "delete", "evict",
    "evict_all", "clear", "flush", "load_all", "lock", "try_lock", "unlock", "force_unlock",
    "add_index", "add_interceptor", "remove_interceptor", "destroy", "publish", "publish_all",
    "offer", "add", "add_all", "compare_and_set", "get_and_set", "increment_and_get",
    "add_and_get", "get_and_add", "alter", "apply", "poll", "take", "drain_to", "submit",
})
WRITE_PREFIXES = ("execute_on_", "remove_if", "try_put", "evict_", "replace_")
# Listener bookkeeping is registration, not data: allowed although it says "remove".
ALLOWED = frozenset({"remove_entry_listener", "remove_listener"})
SQL_DML = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|SINK\s+INTO|CREATE|DROP|TRUNCATE|ALTER)\b")
# obf_contract: the small package shared with the worker (stdlib + hazelcast + orjson itself).
ALLOWED_TOP_IMPORTS = {"hazelcast", "orjson", "engine_adapter", "obf_contract"} | set(sys.stdlib_module_names)


def _event_attributes(tree: ast.AST) -> set[str]:
    """Targets (as source text) that are assigned ``threading.Event()`` in the module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if ast.unparse(node.value.func) in {"threading.Event", "Event"}:
                names.update(ast.unparse(t) for t in node.targets)
    return names


def _is_write(name: str) -> bool:
    return name not in ALLOWED and (name in WRITE_METHODS or name.startswith(WRITE_PREFIXES))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_write_method_is_referenced(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    events = _event_attributes(tree)
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_write(node.attr):
            receiver = ast.unparse(node.value)
            if node.attr in {"set", "clear"} and receiver in events:
                continue
            offences.append(f"{path.name}:{node.lineno} .{node.attr} on {receiver}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)) or _is_write(name.value):
                offences.append(f"{path.name}:{node.lineno} getattr could hide a write")
    assert offences == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_sql(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Attribute) and node.attr == "sql"), f"{path.name}:{node.lineno} uses .sql"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert SQL_DML.search(node.value) is None, f"{path.name}:{node.lineno} SQL statement in a string"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_imports_only_stdlib_hazelcast_orjson(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            tops = {(node.module or "").split(".")[0]} if node.level == 0 else {"engine_adapter"}
        else:
            continue
        assert tops <= ALLOWED_TOP_IMPORTS, f"{path.name}:{node.lineno} imports {tops - ALLOWED_TOP_IMPORTS}"


def test_the_checker_catches_a_write() -> None:
    # The rules above must actually flag writes, or the tests prove nothing.
    tree = ast.parse("m = client.get_map('x').blocking()\nm.put(1, 2)\nm.execute_on_key(1, p)\n"
                     "self._closed = threading.Event()\nself._closed.set()\nother.set(3)\n")
    events = _event_attributes(tree)
    flagged = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_write(n.attr)
               and not (n.attr in {"set", "clear"} and ast.unparse(n.value) in events)]
    assert sorted(flagged) == ["execute_on_key", "put", "set"]


def test_importing_the_adapter_loads_nothing_heavy() -> None:
    # The trader-light promise at run time: no worker module, numpy, numba, matplotlib or rich.
    heavy = ("obf_features_worker", "numpy", "numba", "llvmlite", "matplotlib", "rich", "prometheus_client")
    code = ("import sys, engine_adapter, engine_adapter.example; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ADAPTER_DIR.parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
