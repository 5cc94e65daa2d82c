"""The benchmark summary's logic (bench/targets.py, bench/previous.py, bench/run_all.py): verdicts
are computed from the figures, rows survive the trip between processes, the overload benchmark's
per-tree dict rows merge into side-by-side rows, and the previous design is materialised from
git history. No benchmark is run here."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import previous as P  # noqa: E402 - bench/ is not a package
import run_all as R  # noqa: E402
import targets as T  # noqa: E402


def row(current: float | None, previous: float | None = None, op: str = "<") -> T.Row:
    return T.Row("freshness", "close->visible p99, 400 assets", op, 10.0, "ms", current, previous)


@pytest.mark.parametrize(("op", "value", "met"), [
    ("<", 9.99, True), ("<", 10.0, False), ("<=", 10.0, True), (">", 10.0, False), (">=", 10.0, True),
    (">=", 9.0, False),
])
def test_met_is_computed_from_the_figure_and_the_threshold(op: str, value: float, met: bool) -> None:
    assert row(value, op=op).met is met


def test_no_figure_is_not_applicable_and_previous_has_its_own_verdict() -> None:
    assert row(None).met is None
    assert row(math.nan).met is None
    r = row(4.0, 62.0)
    assert (r.met, r.previous_met) == (True, False)
    cells = T.table([r])[1]
    assert cells[2:6] == ["4 ms", "met", "62.0 ms", "NOT met"]


def test_bad_op_and_judged_rows() -> None:
    with pytest.raises(ValueError, match="op"):
        row(1.0, op="~")
    with pytest.raises(ValueError, match="judged"):
        T.Row("overload", "cadence", "", math.nan, "", None)
    j = T.Row("overload", "cadence", "", math.nan, "", None, None, judged=(False, True), shown=("p99 3 s", "p99 1 s"))
    assert (j.met, j.previous_met) == (False, True)
    assert T.table([j])[1][1:6] == ["cadence", "p99 3 s", "NOT met", "p99 1 s", "met"]


def test_rows_round_trip_as_json_including_nan() -> None:
    import json

    rows = [row(3.5, 61.0), row(math.nan, None),
            T.Row("overload", "x", "", math.nan, "", None, None, "n", judged=(True, None), shown=("a", "b"))]
    back = [T.Row.from_json(json.loads(json.dumps(r.to_json()))) for r in rows]
    assert back[0] == rows[0]
    assert back[1].current is not None and math.isnan(back[1].current) and back[1].previous is None
    assert (back[2].judged, back[2].shown, back[2].met) == ((True, None), ("a", "b"), True)


def test_markdown_escapes_pipes_and_marks_not_met(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row(62.0, 61.0), T.Row("engine", "a | b", ">=", 20.0, "x", 25.0, 5.5)]
    md = T.markdown(rows, "## run")
    lines = md.splitlines()
    assert lines[0] == "## run"
    assert "| **NOT met** |" in lines[4] and "a \\| b >= 20 x" in lines[5]
    T.print_rows(rows)
    assert "1 of 2 targets met" in capsys.readouterr().out


class LegacyOverload:
    """A module with the overload benchmark's per-tree interface: args.previous is a path."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    @staticmethod
    def add_args(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--previous", default=None)
        ap.add_argument("--seconds", type=float, default=60.0)

    def run(self, args: argparse.Namespace) -> list[dict[str, Any]]:
        self.calls.append((args.previous, args.seconds, args.quick))
        late = args.previous is not None
        return [{"target": "cadence", "current": "p99 3 s" if late else "p99 40 ms", "met": not late, "note": "w"},
                {"target": f"only {'previous' if late else 'current'}", "current": "1", "met": True, "note": ""}]


def test_overload_rows_of_both_trees_are_merged(tmp_path: Path) -> None:
    mod = LegacyOverload()
    subjects = [P.Subject("current", P.REPO), P.Subject("previous", tmp_path, "abc")]
    rows = R.run_overload(mod, {"quick": True, "previous": "abc", "members": "m"}, subjects)
    assert mod.calls == [(None, 60.0, True), (str(tmp_path), 60.0, True)]
    assert [(r.target, r.met, r.previous_met, r.shown) for r in rows] == [
        ("cadence", True, False, ("p99 40 ms", "p99 3 s")),
        ("only current", True, None, ("1", "-")),
    ]


def test_subjects_and_materialise_from_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "CACHE_DIR", tmp_path / "cache")
    assert [s.name for s in P.subjects(argparse.Namespace(previous="HEAD", no_previous=True))] == ["current"]
    subjects = P.subjects(argparse.Namespace(previous="HEAD", no_previous=False))
    assert [s.name for s in subjects] == ["current", "previous"]
    tree = subjects[1].root
    sha = subprocess.run(["git", "-C", str(P.REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert tree == tmp_path / "cache" / sha
    assert (tree / "obf_contract" / "record.py").is_file() and not (tree / ".git").exists()
    assert P.materialise("HEAD") == tree  # made once, reused
    with pytest.raises(SystemExit, match="not a commit"):
        P.materialise("no-such-ref-" + sha[:6])
