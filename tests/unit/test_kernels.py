"""Numba kernels called directly: band walk, CSR layout, ring buffers, market values."""

from __future__ import annotations

import numpy as np
import pytest

from obf_features_worker.engine import kernels as K


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


class State:
    def __init__(self, cap: int, imb_len: int, depth_len: int) -> None:
        self.ref = np.zeros(cap)
        self.n_obs = np.zeros(cap, dtype=np.int64)
        self.imb = np.zeros((cap, imb_len))
        self.depth = np.zeros((cap, depth_len))
        self.market_hist = np.zeros(depth_len)
        self.market_n = np.zeros(1, dtype=np.int64)
        self.prev_velocity = np.zeros(1)

    def assets(self, slots, books, *, alpha=0.5, ma=2, span=100.0, q=10_000.0) -> np.ndarray:
        lengths = [len(b) for b, _ in books]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        bid = np.concatenate([np.asarray(b, float) for b, _ in books])
        ask = np.concatenate([np.asarray(a, float) for _, a in books])
        out = np.full((len(books), K.N_ASSET_COLS), np.nan)
        K.step_assets(np.asarray(slots, dtype=np.int64), offsets, bid, ask, span, q, alpha, ma,
                      self.ref, self.n_obs, self.imb, self.depth, out)
        return out

    def market(self, asset_out: np.ndarray, universe_slots, thr=0.05, stress=0.25, cascade=0.5) -> np.ndarray:
        out = np.full(K.N_MARKET_COLS, np.nan)
        K.step_market(asset_out, thr, stress, cascade, self.ref, np.asarray(universe_slots, dtype=np.int64),
                      self.market_hist, self.market_n, self.prev_velocity, out)
        return out


@pytest.mark.parametrize(("side", "q", "expected"), [
    ((100.0, 300.0, 0.0, 0.0), 250.0, 25 * 1 + 25 * 150 / 300),  # fills inside band 1
    ((250.0, 0.0, 0.0, 0.0), 250.0, 25.0),  # exactly the whole first band
    ((0.0, 0.0, 0.0, 500.0), 250.0, 75 + 25 * 250 / 500),  # empty bands are skipped
    ((1.0, 1.0, 1.0, 1.0), 250.0, 100.0),  # never filled: w * L
    ((1000.0,), 1.0, 0.1),  # L = 1: w = 100, 100 * 1/1000
])
def test_side_cost_bps(side: tuple, q: float, expected: float) -> None:
    n = len(side)
    assert K.side_cost_bps(arr(*side), 0, n, 100.0 / n, q) == pytest.approx(expected, rel=1e-15)


def test_side_cost_reads_only_its_own_slice() -> None:
    flat = arr(9e9, 9e9, 100.0, 300.0, 0.0, 0.0, 9e9)
    assert K.side_cost_bps(flat, 2, 4, 25.0, 250.0) == 37.5


def test_csr_assets_of_different_lengths_and_slots() -> None:
    s = State(cap=4, imb_len=3, depth_len=3)
    # slot 3: L = 1, bid 30, ask 10 -> imbalance 0.5; slot 1: L = 3 -> bid 1+2+3, ask 6 -> 0
    out = s.assets([3, 1], [([30.0], [10.0]), ([1.0, 2.0, 3.0], [0.0, 0.0, 6.0])])
    assert out[0, K.COL_DEPTH] == 40.0 and out[0, K.COL_IMBALANCE] == 0.5
    assert out[1, K.COL_DEPTH] == 12.0 and out[1, K.COL_IMBALANCE] == 0.0
    # asymmetry of slot 1: bid 1 + 1 + 1 = 3, ask 6/3 = 2 -> 1/5
    assert out[1, K.COL_DEPTH_ASYMMETRY] == pytest.approx(0.2, rel=1e-15)
    assert out[0, K.COL_BID_USD] == 30.0 and out[0, K.COL_ASK_USD] == 10.0
    assert s.n_obs.tolist() == [0, 1, 0, 1]
    assert s.ref.tolist() == [0.0, 12.0, 0.0, 40.0]
    assert not np.isnan(out).any()


def test_ring_buffers_wrap() -> None:
    s = State(cap=1, imb_len=2, depth_len=2)
    # imbalances +1, -1, +1, +1 ; depths 1, 2, 4, 8 (one-sided books)
    books = [([1.0], [0.0]), ([0.0], [2.0]), ([4.0], [0.0]), ([8.0], [0.0])]
    outs = [s.assets([0], [b], ma=2)[0] for b in books]
    assert [o[K.COL_IMBALANCE_PERSISTENCE] for o in outs] == [1.0, 0.0, 0.0, 1.0]
    assert [o[K.COL_IMBALANCE_MA] for o in outs] == [1.0, 0.0, 0.0, 1.0]
    # depth window of 2: (2-1)/1, (4-2)/2, (8-4)/4
    assert [o[K.COL_WITHDRAWAL_VELOCITY] for o in outs] == [0.0, 1.0, 1.0, 1.0]
    assert s.n_obs[0] == 4


def test_market_median_agreement_pressure_and_regime() -> None:
    s = State(cap=4, imb_len=2, depth_len=3)
    asset_out = np.zeros((4, K.N_ASSET_COLS))
    asset_out[:, K.COL_IMBALANCE] = [0.6, -0.5, 0.3, -0.1]
    asset_out[:, K.COL_WITHDRAWAL_VELOCITY] = [-0.2, 0.0, -0.051, -0.05]
    asset_out[:, K.COL_BID_USD] = [10.0, 0.0, 5.0, 5.0]
    asset_out[:, K.COL_ASK_USD] = [0.0, 20.0, 0.0, 0.0]
    s.ref[:] = [100.0, 200.0, 300.0, 1000.0]
    # universe: slots 0, 1, 2 and one asset never seen (-1, counts 0); slot 3 is not in it
    m = s.market(asset_out, [2, 0, -1, 1])
    assert m[K.MKT_MEDIAN_IMBALANCE] == pytest.approx(0.1, rel=1e-15)  # (-0.1 + 0.3) / 2
    assert m[K.MKT_AGREEMENT_PCT] == 50.0
    assert m[K.MKT_DEPTH_PRESSURE] == pytest.approx(0.3, rel=1e-15)  # 0.6 - 0.5 + 0.3 - 0.1
    assert m[K.MKT_NOTIONAL_PRESSURE] == 0.0  # 20 bid vs 20 ask
    assert m[K.MKT_CASCADE_COUNT] == 2 and m[K.MKT_CASCADE_REGIME] == K.REGIME_CASCADE
    assert m[K.MKT_DEPTH_VELOCITY] == 0.0 and m[K.MKT_ACCELERATION] == 0.0
    assert m[K.MKT_DEPTH_REF_USD] == 150.0 and s.market_hist[0] == 150.0  # (300 + 100 + 0 + 200) / 4
    # next bar: references grow to a mean of 300 -> velocity (300 - 150) / 150 / 1 = 1, acceleration 1
    s.ref[:3] = [200.0, 400.0, 600.0]
    m = s.market(asset_out, [2, 0, -1, 1])
    assert m[K.MKT_DEPTH_VELOCITY] == 1.0 and m[K.MKT_ACCELERATION] == 1.0


def test_step_bar_is_deterministic() -> None:
    rng = np.random.default_rng(7)
    n = 50
    lengths = rng.integers(1, 65, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    bid = rng.random(offsets[-1]) * 1e5
    ask = rng.random(offsets[-1]) * 1e5
    slots = rng.permutation(n).astype(np.int64)

    def run() -> tuple[np.ndarray, np.ndarray]:
        s = State(cap=n, imb_len=10, depth_len=10)
        asset_out = np.empty((n, K.N_ASSET_COLS))
        market_out = np.empty(K.N_MARKET_COLS)
        for _ in range(12):
            K.step_bar(slots, offsets, bid, ask, 100.0, 1e4, 0.01, 5, 0.05, 0.25, 0.5,
                       s.ref, s.n_obs, s.imb, s.depth, np.arange(n, dtype=np.int64), s.market_hist, s.market_n,
                       s.prev_velocity,
                       asset_out, market_out)
        return asset_out.copy(), market_out.copy()

    a1, m1 = run()
    a2, m2 = run()
    assert a1.tobytes() == a2.tobytes() and m1.tobytes() == m2.tobytes()
    assert np.isfinite(a1).all()
    assert ((a1[:, K.COL_IMBALANCE] >= -1) & (a1[:, K.COL_IMBALANCE] <= 1)).all()
    assert ((a1[:, K.COL_SPREAD_PROXY] >= 0) & (a1[:, K.COL_SPREAD_PROXY] <= 200 + 1e-9)).all()
