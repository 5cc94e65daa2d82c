-- obf-features: SQL mappings, views and example queries (Hazelcast 5.5 SQL).
--
-- Usable as-is in Management Center's SQL browser: run the CREATE statements
-- once per cluster (or `obf-features sql --apply`), then any example query.
-- Every statement here is executed against a real member by
-- tests/integration/test_inspection.py, with a running worker.
--
-- Dialect notes (checked against a 5.5.0 member):
--   * __key cannot be renamed in a mapping; in DOLPHIN_OBF_LATEST the key is the
--     symbol and the value repeats it as the "symbol" column.
--   * JSON_VALUE(... RETURNING DOUBLE|BIGINT|BOOLEAN) types a scalar; JSON_QUERY
--     returns JSON. Paths are lax only, so an array is unwrapped into its items:
--     select a list of scalars WITH WRAPPER EMPTY ARRAY ON EMPTY (gives [] for an
--     empty list; WITH CONDITIONAL WRAPPER would give "A" for ["A"] and NULL for []).
--   * ORDER BY / LIMIT work on IMap mappings without an index.
--   * Scalar sub-queries are not supported: "latest bar" = ORDER BY __key DESC LIMIT 1.
--   * There is no CURRENT_TIMESTAMP; ages are in the records (age_ms, bar_ts).
--   * A JSON path may be computed ('$.signal.imbalance[' || i || ']'), and FROM takes a
--     sub-query: how asset-history-btc reads one asset out of the columnar records.
--
-- Lines "-- name: <id>" name the statement that follows (used by
-- `obf-features sql --run <id>` and the tests); the next comment line says what it shows.

-- ---------------------------------------------------------------------------
-- Mappings
-- ---------------------------------------------------------------------------

-- name: map-features
-- One bar record per bar_idx (BIGINT key), the whole record as JSON (see docs/contract.md): columnar
-- (schema 3), every per-asset field a list in the order of $.symbols; DOLPHIN_OBF_LATEST is per asset.
CREATE OR REPLACE MAPPING DOLPHIN_OBF_FEATURES (
    __key BIGINT,
    this JSON
)
TYPE IMap
OPTIONS ('keyFormat' = 'bigint', 'valueFormat' = 'json');

-- name: map-health
-- One health document per worker (key = worker_id); entries expire when a worker dies.
CREATE OR REPLACE MAPPING DOLPHIN_OBF_HEALTH (
    __key VARCHAR,
    this JSON
)
TYPE IMap
OPTIONS ('keyFormat' = 'varchar', 'valueFormat' = 'json');

-- name: map-latest
-- Each asset's latest bar as flat columns (key = symbol), for sorting and filtering without JSON paths.
CREATE OR REPLACE MAPPING DOLPHIN_OBF_LATEST (
    symbol VARCHAR,
    bar_idx BIGINT,
    bar_ts DOUBLE,
    age_ms DOUBLE,
    seq BIGINT,
    depth_1pct_usd DOUBLE,
    depth_quality DOUBLE,
    fill_probability DOUBLE,
    spread_proxy_bps DOUBLE,
    imbalance DOUBLE,
    imbalance_ma5 DOUBLE,
    imbalance_persistence DOUBLE,
    depth_asymmetry DOUBLE,
    withdrawal_velocity DOUBLE
)
TYPE IMap
OPTIONS ('keyFormat' = 'varchar', 'valueFormat' = 'json-flat');

-- ---------------------------------------------------------------------------
-- Views (flat columns over the nested JSON; query them like tables)
-- ---------------------------------------------------------------------------

-- name: view-bars
-- Bar-level market and macro features, one row per bar.
CREATE OR REPLACE VIEW obf_bars AS
SELECT
    __key AS bar_idx,
    TO_TIMESTAMP_TZ(CAST(JSON_VALUE(this, '$.bar_ts' RETURNING DOUBLE) AS BIGINT)) AS bar_time,
    JSON_VALUE(this, '$.bar_ts' RETURNING DOUBLE) AS bar_ts,
    JSON_VALUE(this, '$.n_present' RETURNING BIGINT) AS n_present,
    JSON_VALUE(this, '$.n_assets' RETURNING BIGINT) AS n_assets,
    JSON_VALUE(this, '$.macro.cascade_regime') AS cascade_regime,
    JSON_VALUE(this, '$.macro.cascade_count' RETURNING BIGINT) AS cascade_count,
    JSON_VALUE(this, '$.market.agreement_pct' RETURNING DOUBLE) AS agreement_pct,
    JSON_VALUE(this, '$.market.median_imbalance' RETURNING DOUBLE) AS median_imbalance,
    JSON_VALUE(this, '$.market.depth_pressure' RETURNING DOUBLE) AS depth_pressure,
    JSON_VALUE(this, '$.macro.depth_velocity' RETURNING DOUBLE) AS depth_velocity,
    JSON_VALUE(this, '$.macro.acceleration' RETURNING DOUBLE) AS acceleration,
    JSON_VALUE(this, '$.degraded' RETURNING BOOLEAN) AS degraded,
    JSON_VALUE(this, '$.producer.worker_id') AS worker_id,
    JSON_VALUE(this, '$.market.notional_pressure' RETURNING DOUBLE) AS notional_pressure,
    JSON_VALUE(this, '$.macro.depth_ref_usd' RETURNING DOUBLE) AS depth_ref_usd
FROM DOLPHIN_OBF_FEATURES;

-- name: view-workers
-- Worker health documents as flat columns, one row per live worker.
CREATE OR REPLACE VIEW obf_workers AS
SELECT
    __key AS worker_id,
    JSON_VALUE(this, '$.state') AS state,
    JSON_VALUE(this, '$.role') AS role,
    JSON_VALUE(this, '$.host') AS host,
    JSON_VALUE(this, '$.pid' RETURNING BIGINT) AS pid,
    JSON_VALUE(this, '$.version') AS version,
    JSON_VALUE(this, '$.last_bar_idx' RETURNING BIGINT) AS last_bar_idx,
    JSON_VALUE(this, '$.last_bar_ts' RETURNING DOUBLE) AS last_bar_ts,
    JSON_VALUE(this, '$.updated_at' RETURNING DOUBLE) AS updated_at,
    JSON_VALUE(this, '$.bars_written' RETURNING BIGINT) AS bars_written,
    JSON_VALUE(this, '$.n_present' RETURNING BIGINT) AS n_present,
    JSON_VALUE(this, '$.n_assets' RETURNING BIGINT) AS n_assets,
    JSON_VALUE(this, '$.events.received' RETURNING BIGINT) AS events_received,
    JSON_VALUE(this, '$.events.accepted' RETURNING BIGINT) AS events_accepted,
    JSON_QUERY(this, '$.events.rejected') AS rejected,
    JSON_VALUE(this, '$.compute_ms.p99' RETURNING DOUBLE) AS compute_ms_p99,
    JSON_VALUE(this, '$.event_to_write_ms.p99' RETURNING DOUBLE) AS event_to_write_ms_p99,
    JSON_VALUE(this, '$.write_failures' RETURNING BIGINT) AS write_failures,
    JSON_QUERY(this, '$.stale_assets' WITH WRAPPER EMPTY ARRAY ON EMPTY) AS stale_assets
FROM DOLPHIN_OBF_HEALTH;

-- ---------------------------------------------------------------------------
-- Example queries: latest per asset (DOLPHIN_OBF_LATEST, flat)
-- ---------------------------------------------------------------------------

-- name: latest-by-imbalance
-- Every asset's latest order-book imbalance, most ask-heavy first.
SELECT symbol, imbalance
FROM DOLPHIN_OBF_LATEST
ORDER BY imbalance;

-- name: latest-all
-- Everything about every asset's latest bar, alphabetically.
SELECT *
FROM DOLPHIN_OBF_LATEST
ORDER BY symbol;

-- name: latest-thin-books
-- Assets whose depth is below half its usual level (depth_quality < 0.5), thinnest first.
SELECT symbol, depth_quality, depth_1pct_usd, spread_proxy_bps, withdrawal_velocity
FROM DOLPHIN_OBF_LATEST
WHERE depth_quality < 0.5
ORDER BY depth_quality;

-- name: latest-strong-imbalance
-- Assets with a persistent one-sided book (|imbalance_ma5| > 0.3), strongest first.
SELECT symbol, imbalance, imbalance_ma5, imbalance_persistence, depth_asymmetry
FROM DOLPHIN_OBF_LATEST
WHERE ABS(imbalance_ma5) > 0.3
ORDER BY ABS(imbalance_ma5) DESC;

-- name: latest-stale-input
-- Assets whose snapshot was more than 1 s old at their latest bar, oldest first.
SELECT symbol, bar_idx, age_ms, seq
FROM DOLPHIN_OBF_LATEST
WHERE age_ms > 1000
ORDER BY age_ms DESC;

-- ---------------------------------------------------------------------------
-- Example queries: bar records (DOLPHIN_OBF_FEATURES, nested JSON)
-- ---------------------------------------------------------------------------

-- name: bars-recent
-- The last 20 bars: regime, agreement and depth velocity.
SELECT
    __key AS bar_idx,
    JSON_VALUE(this, '$.bar_ts' RETURNING DOUBLE) AS bar_ts,
    JSON_VALUE(this, '$.n_present' RETURNING BIGINT) AS n_present,
    JSON_VALUE(this, '$.macro.cascade_regime') AS cascade_regime,
    JSON_VALUE(this, '$.market.agreement_pct' RETURNING DOUBLE) AS agreement_pct,
    JSON_VALUE(this, '$.macro.depth_velocity' RETURNING DOUBLE) AS depth_velocity,
    JSON_VALUE(this, '$.degraded' RETURNING BOOLEAN) AS degraded
FROM DOLPHIN_OBF_FEATURES
ORDER BY __key DESC
LIMIT 20;

-- name: bar-latest-record
-- The newest bar record, whole (market, macro and the producer block as JSON).
SELECT
    __key AS bar_idx,
    JSON_QUERY(this, '$.market') AS market,
    JSON_QUERY(this, '$.macro') AS macro,
    JSON_QUERY(this, '$.producer') AS producer,
    this AS record
FROM DOLPHIN_OBF_FEATURES
ORDER BY __key DESC
LIMIT 1;

-- name: asset-history-btc
-- One asset across the last 20 bars it was present in (edit the symbol in the one place it appears, '"BTCUSDT"'; records are columnar, so its position in $.symbols picks its value in each column).
SELECT
    bar_idx,
    JSON_VALUE(this, '$.signal.imbalance[' || i || ']' RETURNING DOUBLE) AS imbalance,
    JSON_VALUE(this, '$.signal.imbalance_ma5[' || i || ']' RETURNING DOUBLE) AS imbalance_ma5,
    JSON_VALUE(this, '$.placement.depth_quality[' || i || ']' RETURNING DOUBLE) AS depth_quality,
    JSON_VALUE(this, '$.placement.spread_proxy_bps[' || i || ']' RETURNING DOUBLE) AS spread_proxy_bps,
    JSON_VALUE(this, '$.age_ms[' || i || ']' RETURNING DOUBLE) AS age_ms,
    JSON_VALUE(this, '$.symbols[' || i || ']') AS symbol
FROM (
    -- i = the number of commas before the symbol in the compact symbols array (symbols hold none)
    SELECT bar_idx, this, CAST(CHAR_LENGTH(head) - CHAR_LENGTH(REPLACE(head, ',', '')) AS VARCHAR) AS i
    FROM (
        SELECT bar_idx, this, SUBSTRING(symbols FROM 1 FOR POSITION('"BTCUSDT"' IN symbols)) AS head
        FROM (
            SELECT __key AS bar_idx, this, CAST(JSON_QUERY(this, '$.symbols' WITH WRAPPER) AS VARCHAR) AS symbols
            FROM DOLPHIN_OBF_FEATURES
        )
    )
    WHERE head <> ''
)
ORDER BY bar_idx DESC
LIMIT 20;

-- name: bars-by-regime
-- How many stored bars were in each cascade regime (NULL = bars without assets).
SELECT JSON_VALUE(this, '$.macro.cascade_regime') AS cascade_regime, COUNT(*) AS bars
FROM DOLPHIN_OBF_FEATURES
GROUP BY JSON_VALUE(this, '$.macro.cascade_regime');

-- name: bars-degraded
-- Recent bars the worker flagged as degraded, with the assets that were stale.
SELECT
    __key AS bar_idx,
    JSON_VALUE(this, '$.n_present' RETURNING BIGINT) AS n_present,
    JSON_QUERY(this, '$.producer.stale_assets' WITH WRAPPER EMPTY ARRAY ON EMPTY) AS stale_assets
FROM DOLPHIN_OBF_FEATURES
WHERE JSON_VALUE(this, '$.degraded' RETURNING BOOLEAN) OR JSON_VALUE(this, '$.producer.degraded' RETURNING BOOLEAN)
ORDER BY __key DESC
LIMIT 50;

-- name: bars-range
-- Stored bar range: count, oldest and newest bar_idx.
SELECT COUNT(*) AS bars, MIN(__key) AS first_bar_idx, MAX(__key) AS last_bar_idx
FROM DOLPHIN_OBF_FEATURES;

-- name: bars-view-recent
-- The same through the obf_bars view: the last 20 bars with readable time.
SELECT bar_idx, bar_time, n_present, cascade_regime, agreement_pct, median_imbalance, depth_velocity, degraded
FROM obf_bars
ORDER BY bar_idx DESC
LIMIT 20;

-- ---------------------------------------------------------------------------
-- Example queries: workers (DOLPHIN_OBF_HEALTH)
-- ---------------------------------------------------------------------------

-- name: workers
-- Live workers: state, role, last bar written, rejects by reason.
SELECT
    __key AS worker_id,
    JSON_VALUE(this, '$.state') AS state,
    JSON_VALUE(this, '$.role') AS role,
    JSON_VALUE(this, '$.last_bar_idx' RETURNING BIGINT) AS last_bar_idx,
    JSON_VALUE(this, '$.bars_written' RETURNING BIGINT) AS bars_written,
    JSON_QUERY(this, '$.events.rejected') AS rejected,
    JSON_VALUE(this, '$.event_to_write_ms.p99' RETURNING DOUBLE) AS event_to_write_ms_p99
FROM DOLPHIN_OBF_HEALTH
ORDER BY __key;

-- name: workers-view
-- The same through the obf_workers view.
SELECT worker_id, state, role, host, pid, last_bar_idx, bars_written, events_accepted, rejected, stale_assets
FROM obf_workers
ORDER BY worker_id;
