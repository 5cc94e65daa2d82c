"""Issue targets as rows: what every benchmark returns, and the one printer of the summary.

A :class:`Row` is one target (text, comparison, threshold, unit) with the figure measured on the
current tree and the same figure measured on the previous design in the same run. ``met`` is
computed from ``current`` and the threshold (never written by hand); a row without a current
figure (the benchmark could not measure it, or the row points at tests) is ``n/a``.

The bench contract (every ``bench/bench_*.py`` and ``bench/bench_overload.py``):

* ``run(args: argparse.Namespace) -> list[Row]``: runs the benchmark, prints its own tables as it
  goes, returns its rows. ``args`` carries at least ``quick: bool``, ``members: str`` (host:port,...
  of the cluster to use, "" = start one), ``cluster: str``, ``member_pid: int | None`` and
  ``previous: str | None`` (the git ref of the previous design; None = measure the current tree
  only). ``bench.previous.subjects(args)`` turns it into the trees to measure.
* optionally ``configure(parser)``: adds the script's own options; ``run_all`` fills their defaults.

A benchmark that judges a target itself (several measurements behind one verdict, e.g. the
overload run) gives ``op=""`` with ``judged`` (its verdict on the current and the previous tree,
computed from what it measured) and ``shown`` (the figures as text).

Rows cross process boundaries as JSON (:meth:`Row.to_json` / :meth:`Row.from_json`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# comparison -> predicate(value, threshold)
_OPS = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
}


@dataclass(frozen=True)
class Row:
    """One target of the issue, measured on the current tree and on the previous design.

    bench: the benchmark that measured it ("freshness"). target: what is measured, without the
    threshold ("close->visible p99 at 400 assets"). op / threshold / unit: the target is
    ``value op threshold`` in ``unit`` ("<", 10.0, "ms"). current / previous: the figure on each
    tree (None: not measured; NaN: measured, no data). note: how it was measured, or why missing.
    judged / shown: for ``op=""`` only: the benchmark's own verdicts (current, previous) and figures.
    """

    bench: str
    target: str
    op: str
    threshold: float
    unit: str
    current: float | None
    previous: float | None = None
    note: str = ""
    judged: tuple[bool | None, bool | None] | None = None
    shown: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.op == "":
            if self.judged is None:
                raise ValueError("Row.judged is required when Row.op is empty (a benchmark's own verdict)")
        elif self.op not in _OPS:
            raise ValueError(f"Row.op must be one of {', '.join(_OPS)} or empty, got {self.op!r}")

    @property
    def met(self) -> bool | None:
        """Whether the current figure meets the target; None when there is no current figure."""
        if self.judged is not None:
            return self.judged[0]
        return _check(self.op, self.current, self.threshold)

    @property
    def previous_met(self) -> bool | None:
        """Whether the previous design met it (same rule)."""
        if self.judged is not None:
            return self.judged[1]
        return _check(self.op, self.previous, self.threshold)

    def target_text(self) -> str:
        if not self.op:
            return self.target
        t = self.threshold
        shown = f"{int(t):,}" if float(t).is_integer() else _num(t)
        return f"{self.target} {self.op} {shown} {self.unit}".rstrip()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("current", "previous"):  # JSON has no NaN: None-with-a-flag keeps "no data" apart
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
                d[k + "_nan"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        kw = {k: d[k] for k in ("bench", "target", "op", "threshold", "unit", "current", "previous", "note")
              if k in d}
        for k in ("judged", "shown"):
            if d.get(k) is not None:
                kw[k] = tuple(d[k])
        for k in ("current", "previous"):
            if d.get(k + "_nan"):
                kw[k] = float("nan")
        return cls(**kw)


def _check(op: str, value: float | None, threshold: float) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(_OPS[op](value, threshold))


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "no data"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if a >= 0.01 else f"{x:.2g}"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


def _fig(v: float | None, unit: str) -> str:
    s = _num(v)
    return s if v is None or (isinstance(v, float) and math.isnan(v)) else f"{s} {unit}".rstrip()


def table(rows: Iterable[Row]) -> list[list[str]]:
    """Header + one list of cells per row: bench, target, current, verdict, previous, its verdict, note."""
    out = [["bench", "target", "current", "", "previous design", "", "note"]]
    for r in rows:
        cur, prev = r.shown if r.shown is not None else (_fig(r.current, r.unit), _fig(r.previous, r.unit))
        has_prev = r.previous is not None or (r.judged is not None and r.judged[1] is not None)
        out.append([r.bench, r.target_text(), cur, _verdict(r.met), prev, _verdict(r.previous_met) if has_prev else "",
                    r.note])
    return out


def print_rows(rows: Sequence[Row], title: str = "targets") -> None:
    """The summary as a plain aligned table (notes last, unpadded)."""
    cells = table(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    print(title)
    for k, c in enumerate(cells):
        print(" | ".join(x.ljust(w) for x, w in zip(c[:-1], widths)) + (" | " + c[-1] if c[-1] else ""))
        if k == 0:
            print("-+-".join("-" * w for w in widths))
    met = sum(1 for r in rows if r.met)
    print(f"{met} of {len(rows)} targets met ({sum(1 for r in rows if r.met is None)} n/a)")
    print(flush=True)


def markdown(rows: Sequence[Row], title: str = "") -> str:
    """The summary as a markdown table (for docs/performance.md)."""
    cells = table(rows)
    lines = [f"{title}\n" if title else ""]
    lines.append("| " + " | ".join(cells[0]) + " |")
    lines.append("|" + "---|" * len(cells[0]))
    for c in cells[1:]:
        c = [x.replace("|", "\\|") for x in c]
        c[3] = f"**{c[3]}**" if c[3] == "NOT met" else c[3]
        lines.append("| " + " | ".join(c) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"
