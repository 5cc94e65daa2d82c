"""Numba kernels of the feature definitions (docs/features.md), vectorised over assets.

Pure functions over numpy arrays: the only side effects are on the state and output arrays
passed in. ``step_bar`` computes every present asset of one bar plus the cross-asset
market/macro values in a single call.

Input layout (CSR, so assets may have different band counts L without padding): the bands
of present asset i are ``bid[offsets[i]:offsets[i+1]]`` / ``ask[...]``, level 0 nearest the mid.

State layout (rows indexed by asset slot): ``n_obs[s]`` = bars in which the asset was present;
``imb_hist[s]`` / ``depth_hist[s]`` are ring buffers written at ``n_obs % lookback``.
The aggregate depth history (``depth_ref_usd``, the in-process engine's macro depth) works the
same way with ``market_n[0]``.

Sums run left to right in a fixed order (assets in the caller's order, bands from the mid
outwards), so the same inputs give bit-identical outputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Columns of the per-asset output, float64[n, N_ASSET_COLS].
COL_DEPTH = 0  # depth_1pct_usd, USD
COL_IMBALANCE = 1  # [-1, 1]
COL_DEPTH_ASYMMETRY = 2  # [-1, 1]
COL_DEPTH_QUALITY = 3  # ratio >= 0
COL_FILL_PROBABILITY = 4  # [0, 1)
COL_SPREAD_PROXY = 5  # bps
COL_IMBALANCE_MA = 6  # [-1, 1]
COL_IMBALANCE_PERSISTENCE = 7  # [-1, 1]
COL_WITHDRAWAL_VELOCITY = 8  # fraction per bar
COL_BID_USD = 9  # sum of bid notional, USD
COL_ASK_USD = 10  # sum of ask notional, USD
N_ASSET_COLS = 11

# Slots of the market/macro output, float64[N_MARKET_COLS].
MKT_MEDIAN_IMBALANCE = 0
MKT_AGREEMENT_PCT = 1
MKT_DEPTH_PRESSURE = 2
MKT_CASCADE_COUNT = 3
MKT_CASCADE_REGIME = 4  # one of REGIME_*
MKT_DEPTH_VELOCITY = 5
MKT_ACCELERATION = 6
MKT_NOTIONAL_PRESSURE = 7  # (sum B - sum A) / (sum B + sum A), [-1, 1]
MKT_DEPTH_REF_USD = 8  # mean over the universe of each asset's EMA reference depth, USD
N_MARKET_COLS = 9

REGIME_CALM = 0
REGIME_STRESS = 1
REGIME_CASCADE = 2
REGIME_NAMES = ("CALM", "STRESS", "CASCADE")


@njit(cache=True)
def _sign(x: float) -> int:
    if x > 0.0:
        return 1
    if x < 0.0:
        return -1
    return 0


@njit(cache=True)
def side_cost_bps(side: np.ndarray, start: int, n_levels: int, width_bps: float, ref_notional: float) -> float:
    """bps from the mid to fill ``ref_notional`` USD walking the bands; ``width_bps * n_levels`` if never filled."""
    cum = 0.0
    for k in range(n_levels):
        x = side[start + k]
        if x > 0.0 and cum + x >= ref_notional:
            # float(): a no-op in numba, and it types the value for mypy
            return float(width_bps * k + width_bps * (ref_notional - cum) / x)
        cum += x
    return width_bps * n_levels


@njit(cache=True)
def step_assets(
    slots: np.ndarray,  # int64[n]: state row of present asset i
    offsets: np.ndarray,  # int64[n + 1]
    bid: np.ndarray,  # float64[offsets[n]], USD per band
    ask: np.ndarray,
    band_span_bps: float,
    ref_notional: float,
    ema_alpha: float,
    ma_window: int,
    ref_depth: np.ndarray,  # float64[cap], state
    n_obs: np.ndarray,  # int64[cap], state
    imb_hist: np.ndarray,  # float64[cap, imbalance_lookback], state
    depth_hist: np.ndarray,  # float64[cap, depth_lookback], state
    out: np.ndarray,  # float64[n, N_ASSET_COLS]
) -> None:
    """Per-asset features of one bar; updates the EMA and histories of the present assets."""
    imb_len = imb_hist.shape[1]
    depth_len = depth_hist.shape[1]
    for i in range(slots.shape[0]):
        s = slots[i]
        start = offsets[i]
        n_levels = offsets[i + 1] - start

        bid_sum = 0.0
        ask_sum = 0.0
        bid_w = 0.0
        ask_w = 0.0
        for k in range(n_levels):
            b = bid[start + k]
            a = ask[start + k]
            bid_sum += b
            ask_sum += a
            bid_w += b / (k + 1)
            ask_w += a / (k + 1)
        depth = bid_sum + ask_sum
        imbalance = (bid_sum - ask_sum) / depth if depth != 0.0 else 0.0
        w_total = bid_w + ask_w
        asymmetry = (bid_w - ask_w) / w_total if w_total != 0.0 else 0.0

        t = n_obs[s]
        if t == 0:
            ref = depth
        else:
            ref = (1.0 - ema_alpha) * ref_depth[s] + ema_alpha * depth
        ref_depth[s] = ref
        quality = depth / ref if ref != 0.0 else 1.0
        fill = quality / (1.0 + quality)

        width = band_span_bps / n_levels
        spread = side_cost_bps(bid, start, n_levels, width, ref_notional) + side_cost_bps(
            ask, start, n_levels, width, ref_notional
        )

        imb_hist[s, t % imb_len] = imbalance
        depth_hist[s, t % depth_len] = depth
        t += 1
        n_obs[s] = t

        n_imb = min(t, imb_len)
        m = min(ma_window, n_imb)
        acc = 0.0
        for j in range(m):
            acc += imb_hist[s, (t - 1 - j) % imb_len]
        ma = acc / m
        # Until the ring is full the held values are exactly positions 0 .. t-1.
        signs = 0
        for j in range(n_imb):
            signs += _sign(imb_hist[s, j])
        persistence = signs / n_imb

        n_depth = min(t, depth_len)
        k_span = n_depth - 1
        oldest = depth_hist[s, (t - n_depth) % depth_len]
        if k_span > 0 and oldest > 0.0:
            velocity = (depth - oldest) / oldest / k_span
        else:
            velocity = 0.0

        out[i, COL_DEPTH] = depth
        out[i, COL_IMBALANCE] = imbalance
        out[i, COL_DEPTH_ASYMMETRY] = asymmetry
        out[i, COL_DEPTH_QUALITY] = quality
        out[i, COL_FILL_PROBABILITY] = fill
        out[i, COL_SPREAD_PROXY] = spread
        out[i, COL_IMBALANCE_MA] = ma
        out[i, COL_IMBALANCE_PERSISTENCE] = persistence
        out[i, COL_WITHDRAWAL_VELOCITY] = velocity
        out[i, COL_BID_USD] = bid_sum
        out[i, COL_ASK_USD] = ask_sum


@njit(cache=True)
def step_market(
    asset_out: np.ndarray,  # float64[n, N_ASSET_COLS] from step_assets, n >= 1
    cascade_threshold: float,
    stress_share: float,
    cascade_share: float,
    ref_depth: np.ndarray,  # float64[cap]: EMA reference depth per slot (already updated this bar)
    universe_slots: np.ndarray,  # int64[u], u >= 1: slot of each universe asset in symbol order, -1 = never seen
    market_hist: np.ndarray,  # float64[depth_lookback], state: depth_ref_usd history
    market_n: np.ndarray,  # int64[1], state: bars with at least one asset present
    prev_velocity: np.ndarray,  # float64[1], state: previous bar's depth_velocity
    out: np.ndarray,  # float64[N_MARKET_COLS]
) -> None:
    """Cross-asset market and macro values of one bar with n >= 1 assets present.

    The in-process engine's per-bar loop defines depth_pressure (plain sum of the present
    assets' imbalances) and the macro depth (mean reference depth over the universe, whose
    velocity is the per-asset withdrawal-velocity formula); docs/features.md.
    """
    n = asset_out.shape[0]
    imbs = asset_out[:, COL_IMBALANCE].copy()
    imbs.sort()
    half = n // 2
    if n % 2 == 1:
        median = imbs[half]
    else:
        median = (imbs[half - 1] + imbs[half]) / 2.0
    median_sign = _sign(median)

    agree = 0
    cascades = 0
    bid_total = 0.0
    ask_total = 0.0
    pressure = 0.0
    for i in range(n):
        imbalance = asset_out[i, COL_IMBALANCE]
        if _sign(imbalance) == median_sign:
            agree += 1
        if asset_out[i, COL_WITHDRAWAL_VELOCITY] < -cascade_threshold:
            cascades += 1
        bid_total += asset_out[i, COL_BID_USD]
        ask_total += asset_out[i, COL_ASK_USD]
        pressure += imbalance
    both = bid_total + ask_total
    notional_pressure = (bid_total - ask_total) / both if both != 0.0 else 0.0

    share = cascades / n
    if share >= cascade_share:
        regime = REGIME_CASCADE
    elif share >= stress_share:
        regime = REGIME_STRESS
    else:
        regime = REGIME_CALM

    ref_total = 0.0
    u = universe_slots.shape[0]
    for j in range(u):
        s = universe_slots[j]
        if s >= 0:
            ref_total += ref_depth[s]
    depth_ref = ref_total / u
    hist_len = market_hist.shape[0]
    t = market_n[0]
    market_hist[t % hist_len] = depth_ref
    t += 1
    market_n[0] = t
    held = min(t, hist_len)
    oldest = market_hist[(t - held) % hist_len]
    k_span = held - 1
    if k_span > 0 and oldest > 0.0:
        velocity = (depth_ref - oldest) / oldest / k_span
    else:
        velocity = 0.0
    acceleration = velocity - prev_velocity[0] if t > 1 else 0.0
    prev_velocity[0] = velocity

    out[MKT_MEDIAN_IMBALANCE] = median
    out[MKT_AGREEMENT_PCT] = 100.0 * (agree / n)
    out[MKT_DEPTH_PRESSURE] = pressure
    out[MKT_CASCADE_COUNT] = cascades
    out[MKT_CASCADE_REGIME] = regime
    out[MKT_DEPTH_VELOCITY] = velocity
    out[MKT_ACCELERATION] = acceleration
    out[MKT_NOTIONAL_PRESSURE] = notional_pressure
    out[MKT_DEPTH_REF_USD] = depth_ref


@njit(cache=True)
def step_bar(
    slots: np.ndarray,
    offsets: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    band_span_bps: float,
    ref_notional: float,
    ema_alpha: float,
    ma_window: int,
    cascade_threshold: float,
    stress_share: float,
    cascade_share: float,
    ref_depth: np.ndarray,
    n_obs: np.ndarray,
    imb_hist: np.ndarray,
    depth_hist: np.ndarray,
    universe_slots: np.ndarray,
    market_hist: np.ndarray,
    market_n: np.ndarray,
    prev_velocity: np.ndarray,
    asset_out: np.ndarray,
    market_out: np.ndarray,
) -> None:
    """One bar with n >= 1 present assets: ``step_assets`` then ``step_market`` in one call."""
    step_assets(slots, offsets, bid, ask, band_span_bps, ref_notional, ema_alpha, ma_window,
                ref_depth, n_obs, imb_hist, depth_hist, asset_out)
    step_market(asset_out, cascade_threshold, stress_share, cascade_share, ref_depth, universe_slots,
                market_hist, market_n, prev_velocity, market_out)
