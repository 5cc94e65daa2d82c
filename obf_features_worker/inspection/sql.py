"""The SQL views file (``deploy/sql/obf_mappings.sql``): statement splitting and ``obf-features sql``.

The file is plain Hazelcast SQL, usable as-is in Management Center. This module splits it
into statements (``--`` and ``/* */`` comments, quoted strings and identifiers, ``;``),
reads each statement's ``-- name: <id>`` tag and title comment, renames map/view names
when they differ from the defaults, and applies the mappings to a cluster. The tests and
the CLI share it, so what the tests execute is exactly what a user pastes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from obf_features_worker.inspection import cluster_args
from obf_features_worker.logs import setup_logging
from obf_features_worker.service import grid

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SQL_FILE = Path(os.environ.get("OBF_SQL_FILE", REPO_ROOT / "deploy" / "sql" / "obf_mappings.sql"))

_NAME_TAG = re.compile(r"^name:\s*([A-Za-z0-9_.-]+)\s*$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLANK_LINE = re.compile(r"[ \t\r]*(\n|$)")


class StatementKind(str, Enum):
    MAPPING = "mapping"  # CREATE [OR REPLACE] MAPPING
    VIEW = "view"  # CREATE [OR REPLACE] VIEW
    QUERY = "query"  # SELECT / WITH / SHOW / EXPLAIN
    OTHER = "other"


@dataclass(frozen=True)
class SqlStatement:
    """One statement of the file, without comments or the trailing semicolon."""

    text: str
    kind: StatementKind
    line: int  # 1-based line where the statement starts
    name: str | None = None  # from a "-- name: <id>" comment right before it
    title: str = ""  # the first other comment line right before it

    @property
    def creates(self) -> bool:
        """True for catalogue statements that ``--apply`` executes (mappings, views)."""
        return self.kind in (StatementKind.MAPPING, StatementKind.VIEW)


class SqlFileError(ValueError):
    """The SQL text cannot be split (unterminated string, identifier or comment; duplicate name)."""


def _kind(text: str) -> StatementKind:
    words = [w.upper() for w in _IDENT.findall(text[:200])]
    if words[:1] == ["CREATE"]:
        rest = words[3:] if words[1:3] == ["OR", "REPLACE"] else words[1:]
        if rest[:1] == ["MAPPING"] or rest[:2] == ["EXTERNAL", "MAPPING"]:
            return StatementKind.MAPPING
        if rest[:1] == ["VIEW"]:
            return StatementKind.VIEW
    if words[:1] and words[0] in {"SELECT", "WITH", "SHOW", "EXPLAIN"}:
        return StatementKind.QUERY
    return StatementKind.OTHER


def _rename_code(code: str, rename: Mapping[str, str]) -> str:
    if not rename:
        return code
    return _IDENT.sub(lambda m: rename.get(m.group(0), m.group(0)), code)


def split_statements(sql: str, rename: Mapping[str, str] | None = None) -> list[SqlStatement]:
    """Split SQL text into statements; ``rename`` maps object names (whole identifiers) to new ones.

    Renaming applies to bare and double-quoted identifiers only, never inside string
    literals or comments. Raises SqlFileError on unterminated quotes/comments or a
    ``name`` used twice.
    """
    rename = dict(rename or {})
    statements: list[SqlStatement] = []
    parts: list[str] = []  # the current statement's text, comments removed
    comments: list[str] = []  # comment lines in the block right before the statement
    start_line = 0
    i, n, line = 0, len(sql), 1

    def flush() -> None:
        nonlocal parts, comments, start_line
        text = "".join(parts).strip()
        if text:
            name, title = None, ""
            for c in comments:
                tag = _NAME_TAG.match(c)
                if tag and name is None:
                    name = tag.group(1)
                elif not tag and not title and c and not set(c) <= set("-=* "):
                    title = c
            statements.append(SqlStatement(text, _kind(text), start_line, name, title))
        parts, comments, start_line = [], [], 0

    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            if not start_line:
                comments.append(sql[i + 2:end].strip())
            i = end
            continue
        if ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                raise SqlFileError(f"line {line}: unterminated /* comment")
            line += sql.count("\n", i, end)
            parts.append(" ")
            i = end + 2
            continue
        if ch in "'\"":
            j = i + 1
            while True:
                j = sql.find(ch, j)
                if j == -1:
                    what = "string" if ch == "'" else "quoted identifier"
                    raise SqlFileError(f"line {line}: unterminated {what}")
                if sql.startswith(ch * 2, j):  # doubled quote = escaped quote
                    j += 2
                    continue
                break
            token = sql[i:j + 1]
            if ch == '"' and token[1:-1] in rename:
                token = f'"{rename[token[1:-1]]}"'
            start_line = start_line or line
            parts.append(token)
            line += token.count("\n")
            i = j + 1
            continue
        if ch == ";":
            flush()
            i += 1
            continue
        if ch == "\n":
            line += 1
            if not start_line and _BLANK_LINE.match(sql, i + 1):
                comments = []  # a blank line ends the comment block that belongs to a statement
        # Plain code up to the next special character, renamed as a whole.
        j = i + 1
        while j < n and sql[j] not in "-/'\";\n":
            j += 1
        chunk = sql[i:j]
        if not start_line and chunk.strip():
            start_line = line
        parts.append(_rename_code(chunk, rename))
        i = j
    flush()
    names = [s.name for s in statements if s.name]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise SqlFileError(f"statement names used twice: {', '.join(dupes)}")
    return statements


def load_statements(path: Path | str = DEFAULT_SQL_FILE,
                    rename: Mapping[str, str] | None = None) -> list[SqlStatement]:
    """The statements of a SQL file (default: the shipped obf_mappings.sql)."""
    return split_statements(Path(path).read_text(encoding="utf-8"), rename)


def render_sql(statements: Sequence[SqlStatement]) -> str:
    """Statements back as a SQL script (each preceded by its name/title comments)."""
    out = []
    for st in statements:
        if st.name:
            out.append(f"-- name: {st.name}")
        if st.title:
            out.append(f"-- {st.title}")
        out.append(st.text + ";\n")
    return "\n".join(out)


def map_renames(features_map: str, health_map: str, latest_map: str,
                view_suffix: str = "") -> dict[str, str]:
    """The rename table for non-default map names (and an optional suffix for the view names)."""
    table = {"DOLPHIN_OBF_FEATURES": features_map, "DOLPHIN_OBF_HEALTH": health_map,
             "DOLPHIN_OBF_LATEST": latest_map, "obf_bars": "obf_bars" + view_suffix,
             "obf_workers": "obf_workers" + view_suffix}
    return {k: v for k, v in table.items() if k != v}


def apply_statements(reader: Any, statements: Sequence[SqlStatement], *,
                     stop_on_error: bool = True) -> list[tuple[SqlStatement, Exception | None]]:
    """Execute the mapping and view statements in file order: (statement, error or None) each.

    ``reader`` is an ``grid.InspectionReader``. With ``stop_on_error`` the first
    failure is raised (the client's HazelcastSqlError); otherwise every statement is tried.
    """
    done: list[tuple[SqlStatement, Exception | None]] = []
    for st in statements:
        if not st.creates:
            continue
        try:
            reader.sql(st.text)
        except Exception as exc:  # reported per statement; the caller decides
            if stop_on_error:
                raise
            log.debug("sql statement failed kind=%s name=%s line=%d error=%s", st.kind.value, st.name, st.line, exc)
            done.append((st, exc))
            continue
        log.info("sql applied kind=%s name=%s", st.kind.value, st.name)
        done.append((st, None))
    return done


# --- `obf-features sql` --------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """The `obf-features sql` options on the parser the CLI made for it."""
    parser.description = ("Work with the SQL views file (default deploy/sql/obf_mappings.sql). "
                     "Without options: list its statements. Map-name options rename the maps in every "
                     "statement (for non-default names).")
    parser.add_argument("--file", type=Path, default=DEFAULT_SQL_FILE,
                        help="SQL file (env OBF_SQL_FILE, default the shipped obf_mappings.sql)")
    parser.add_argument("--print", dest="print_sql", action="store_true",
                        help="print the statements (after renames) for pasting into Management Center")
    parser.add_argument("--apply", action="store_true",
                        help="create the mappings and views on the cluster (CREATE OR REPLACE: idempotent)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME",
                        help="run the example query NAME and print its rows (repeatable; 'all' = every query)")
    parser.add_argument("--max-rows", type=int, default=50, help="rows shown per query (default 50)")
    parser.add_argument("--json", action="store_true",
                        help="with --run: print one JSON object per row, {\"query\": NAME, \"row\": {...}}")
    parser.add_argument("--query-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="cancel an example query after this many seconds (default 30)")
    cluster_args.add_cluster_options(parser, maps=("features", "health", "latest"))
    parser.set_defaults(func=run)


def _cell(value: Any) -> str:
    text = grid.json_text(value)
    if text is not None:
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    setup_logging("WARNING")
    console = Console()
    try:
        rename = map_renames(cluster_args.map_name(args, "features"), cluster_args.map_name(args, "health"),
                             cluster_args.map_name(args, "latest"), view_suffix=args.map_suffix or "")
        statements = load_statements(args.file, rename)
    except (OSError, SqlFileError) as exc:
        print(f"cannot read SQL file {args.file}: {exc}")
        return 2
    by_name = {s.name: s for s in statements if s.name}
    queries = [s for s in statements if s.kind is StatementKind.QUERY]
    wanted: list[SqlStatement] = []
    for name in args.run:
        if name == "all":
            wanted.extend(queries)
        elif name in by_name:
            wanted.append(by_name[name])
        else:
            print(f"no statement named {name!r}; names: {', '.join(sorted(by_name))}")
            return 2

    if args.print_sql:
        print(render_sql(statements))
    if not (args.apply or wanted):
        if not args.print_sql:
            table = Table(title=str(args.file), show_lines=False)
            for col in ("name", "kind", "line", "what it is"):
                table.add_column(col)
            for st in statements:
                table.add_row(st.name or "", st.kind.value, str(st.line), st.title)
            console.print(table)
            print("apply: obf-features sql --apply    run an example: obf-features sql --run <name>")
        return 0

    try:
        client = cluster_args.connect_from_args(args)
    except cluster_args.ConnectFailed as exc:
        print(str(exc))
        return exc.exit_code
    failures = 0
    try:
        reader = grid.InspectionReader(client)
        if args.apply:
            for st, error in apply_statements(reader, statements, stop_on_error=False):
                if error is None:
                    print(f"ok      {st.kind.value:8} {st.name or '(unnamed)'}")
                else:
                    failures += 1
                    print(f"FAILED  {st.kind.value:8} {st.name or '(unnamed)'} line {st.line}: {error}")
        for st in wanted:
            try:
                names, rows = reader.sql(st.text, timeout_s=args.query_timeout)
            except Exception as exc:  # noqa: BLE001 - never raise out of here: count and log instead
                failures += 1
                print(f"FAILED  query {st.name or '(unnamed)'} line {st.line}: {exc}")
                continue
            if args.json:
                for row in rows:
                    cols = {n: grid.decode_json_column(v) for n, v in zip(names, row, strict=True)}
                    print(json.dumps({"query": st.name, "row": cols}, default=str))
                continue
            console.print(f"[bold]{st.name}[/bold]  {st.title}", highlight=False)
            table = Table()
            for col in names:
                table.add_column(col, overflow="fold")
            for row in rows[: args.max_rows]:
                table.add_row(*(_cell(v) for v in row))
            console.print(table)
            if len(rows) > args.max_rows:
                print(f"... {len(rows) - args.max_rows} more rows")
    finally:
        client.shutdown()
    return 1 if failures else 0
