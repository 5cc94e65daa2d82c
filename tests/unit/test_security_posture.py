"""Security posture, checked on the source tree: no code path evaluates, unpickles or
unmarshals anything (docs/reliability.md, "Security posture")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("obf_features_worker", "engine_adapter", "bench", "deploy", "tools")

BANNED_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
BANNED_ATTRS = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("os", "system"),
                ("os", "popen"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
                ("pickle", "loads"), ("marshal", "loads")}  # np.load is safe unless allow_pickle


def findings(source: str, name: str = "<src>") -> list[str]:
    """Every banned use in one module's source, as 'name:line: what'."""
    out = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                out.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in BANNED_BUILTINS:
                out.append(f"{where}: {f.id}()")
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in BANNED_ATTRS:
                out.append(f"{where}: {f.value.id}.{f.attr}()")
            for kw in node.keywords:
                if kw.arg == "shell" and isinstance(kw.value, ast.Constant) and kw.value.value is True:
                    out.append(f"{where}: shell=True")
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    out.append(f"{where}: allow_pickle")
    return out


def source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py"))


def test_the_checker_finds_what_it_looks_for() -> None:
    bad = """
import pickle
import marshal as m
from dill import loads
x = eval("1")
exec("y = 2")
compile("1", "f", "eval")
yaml.load(s)
subprocess.run("ls", shell=True)
np.load("f.npy", allow_pickle=True)
"""
    assert len(findings(bad)) == 9
    assert findings("import json\njson.loads('1')\nast.literal_eval('1')\nre.compile('x')\n") == []


def test_no_source_file_evaluates_or_unpickles() -> None:
    files = source_files()
    assert any(p.name == "ingest.py" for p in files), "the scan does not see the sources"
    problems = [hit for p in files for hit in findings(p.read_text(), str(p.relative_to(REPO)))]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("module", ["obf_features_worker.engine.ingest", "obf_features_worker.engine.snapshot",
                                    "obf_features_worker.engine.checkpoint", "obf_features_worker.service.lease"])
def test_decoders_use_json_only(module: str) -> None:
    """The modules that decode grid values import no serialiser but JSON ones."""
    path = REPO / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & (BANNED_MODULES | {"yaml", "msgpack"}), imported
