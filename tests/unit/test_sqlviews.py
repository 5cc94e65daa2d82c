"""sqlviews: splitting SQL into statements, names/titles, renames; the shipped file's shape."""

from __future__ import annotations

import re

import pytest

from obf_features_worker.inspection.sql import (
    DEFAULT_SQL_FILE,
    SqlFileError,
    StatementKind,
    load_statements,
    map_renames,
    render_sql,
    split_statements,
)

SAMPLE = """-- file header, not attached to anything

-- name: first
-- Makes the mapping.
CREATE OR REPLACE MAPPING M1 (__key BIGINT, this JSON) TYPE IMap OPTIONS ('keyFormat'='bigint', 'valueFormat'='json');

/* block; comment with a semicolon */
-- name: q-semicolon-in-string
-- A query whose literal has ; and -- inside.
SELECT 'a;b -- not a comment', "M1" FROM M1 WHERE x = 'it''s; fine' -- trailing comment; here
;
select 1 from M10;
CREATE VIEW v AS SELECT * FROM M1;
DROP MAPPING M1
"""


def test_split_counts_kinds_and_lines():
    sts = split_statements(SAMPLE)
    assert [s.kind for s in sts] == [StatementKind.MAPPING, StatementKind.QUERY, StatementKind.QUERY,
                                     StatementKind.VIEW, StatementKind.OTHER]
    assert [s.line for s in sts] == [5, 10, 12, 13, 14]
    assert sts[0].name == "first" and sts[0].title == "Makes the mapping."
    assert sts[1].name == "q-semicolon-in-string" and sts[1].title.startswith("A query whose literal")
    assert sts[2].name is None and sts[2].title == ""
    assert [s.creates for s in sts] == [True, False, False, True, False]


def test_strings_and_quoted_identifiers_survive_and_comments_go():
    q = split_statements(SAMPLE)[1].text
    assert "'a;b -- not a comment'" in q
    assert "'it''s; fine'" in q
    assert "trailing comment" not in q and "block;" not in q
    assert not q.endswith(";")


def test_rename_whole_identifiers_only():
    sts = split_statements(SAMPLE, rename={"M1": "M1_T42"})
    assert "MAPPING M1_T42 (" in sts[0].text
    q = sts[1].text
    assert '"M1_T42"' in q and "FROM M1_T42 WHERE" in q
    assert "'a;b -- not a comment'" in q  # literals untouched
    assert sts[2].text == "select 1 from M10"  # a longer identifier is not a match


def test_rename_never_touches_string_literals():
    sts = split_statements("SELECT JSON_VALUE(this, '$.DOLPHIN_OBF_LATEST') FROM DOLPHIN_OBF_LATEST",
                           rename={"DOLPHIN_OBF_LATEST": "X"})
    assert sts[0].text == "SELECT JSON_VALUE(this, '$.DOLPHIN_OBF_LATEST') FROM X"


def test_symbols_with_underscore_and_dash_survive_splitting_and_renames():
    text = ("SELECT JSON_VALUE(this, '$.assets.\"1000PEPE-USDT\".signal.imbalance' RETURNING DOUBLE) AS a, "
            "JSON_VALUE(this, '$.assets.BTCUSD_PERP.signal') AS b FROM DOLPHIN_OBF_FEATURES; "
            "SELECT symbol FROM DOLPHIN_OBF_LATEST WHERE symbol IN ('BTCUSD_PERP', 'ETHUSD_250328')")
    a, b = split_statements(text, rename={"DOLPHIN_OBF_FEATURES": "F", "DOLPHIN_OBF_LATEST": "L"})
    assert a.text == text.split("; ")[0].replace("DOLPHIN_OBF_FEATURES", "F")
    assert b.text == "SELECT symbol FROM L WHERE symbol IN ('BTCUSD_PERP', 'ETHUSD_250328')"


@pytest.mark.parametrize("bad", ["SELECT 'open", 'SELECT "open', "SELECT 1 /* open"])
def test_unterminated_tokens_fail_with_a_line(bad):
    with pytest.raises(SqlFileError, match="line 1"):
        split_statements(bad)


def test_duplicate_names_fail():
    with pytest.raises(SqlFileError, match="dup"):
        split_statements("-- name: dup\nSELECT 1;\n-- name: dup\nSELECT 2;")


def test_shipped_file_has_the_three_mappings_and_named_examples():
    sts = load_statements()
    names = [s.name for s in sts]
    assert all(names), "every statement in the shipped file is named"
    maps = {s.name: s.text for s in sts if s.kind is StatementKind.MAPPING}
    assert set(maps) == {"map-features", "map-health", "map-latest"}
    assert re.search(r"MAPPING DOLPHIN_OBF_FEATURES \(\s*__key BIGINT,\s*this JSON", maps["map-features"])
    assert "'valueFormat' = 'json'" in maps["map-features"]
    assert re.search(r"MAPPING DOLPHIN_OBF_HEALTH \(\s*__key VARCHAR,\s*this JSON", maps["map-health"])
    assert "'valueFormat' = 'json-flat'" in maps["map-latest"]
    # Every flat column of the LATEST doc (shared format) is typed in the mapping.
    latest_fields = {"symbol": "VARCHAR", "bar_idx": "BIGINT", "bar_ts": "DOUBLE", "age_ms": "DOUBLE",
                     "seq": "BIGINT", "depth_1pct_usd": "DOUBLE", "depth_quality": "DOUBLE",
                     "fill_probability": "DOUBLE", "spread_proxy_bps": "DOUBLE", "imbalance": "DOUBLE",
                     "imbalance_ma5": "DOUBLE", "imbalance_persistence": "DOUBLE", "depth_asymmetry": "DOUBLE",
                     "withdrawal_velocity": "DOUBLE"}
    cols = dict(re.findall(r"^\s*(\w+) (VARCHAR|BIGINT|DOUBLE),?$", maps["map-latest"], re.M))
    assert cols == latest_fields
    queries = [s for s in sts if s.kind is StatementKind.QUERY]
    assert len(queries) >= 8 and all(s.title for s in queries)
    assert any("JSON_VALUE" in s.text for s in queries) and any("JSON_QUERY" in s.text for s in queries)
    assert any(s.text == "SELECT symbol, imbalance\nFROM DOLPHIN_OBF_LATEST\nORDER BY imbalance" for s in queries)


def test_map_renames_and_render_roundtrip():
    rename = map_renames("F_T1", "H_T1", "DOLPHIN_OBF_LATEST", view_suffix="_T1")
    assert rename == {"DOLPHIN_OBF_FEATURES": "F_T1", "DOLPHIN_OBF_HEALTH": "H_T1",
                      "obf_bars": "obf_bars_T1", "obf_workers": "obf_workers_T1"}
    sts = load_statements(DEFAULT_SQL_FILE, rename)
    text = render_sql(sts)
    assert "DOLPHIN_OBF_FEATURES" not in text and "DOLPHIN_OBF_HEALTH" not in text
    assert "FROM obf_bars_T1" in text
    again = split_statements(text)
    assert [(s.name, s.kind, s.text) for s in again] == [(s.name, s.kind, s.text) for s in sts]
