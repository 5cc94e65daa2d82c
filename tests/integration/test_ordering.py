"""One bad message never silences an asset, and a producer's clock is visible (issue 17).

A worker runs on a real member with a 10 Hz feed of four assets. Into that feed go the two
poison messages of the issue, for AAAUSDT: a snapshot stamped in 1971 under a higher ``_push_seq``,
and a legal ``_push_seq`` of 2^62. The normal pushes after each must be used in the very next bar
(before the change: the asset vanished for ~28 s to ~100 s). A fifth producer's clock runs 10 s
ahead: every push is rejected, and health and ``obf-features status`` must say so in words.
Synchronisation is on the grid (health, records) with deadlines; the feed runs on its own.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from obf_contract.record import asset_view
from obf_features_worker import cli
from tests.cluster import HzCluster
from tests.integration.fault_tools import ControlledFeeder
from tests.integration.feeder import DEFAULT_SYMBOLS, WorkerProcess, iso, wait_for
from tests.integration.test_worker import assert_contiguous, health, records, worker_env

BAR_S = 2.0
YEAR_1971 = 31_536_000.0  # 1971-01-01T00:00:00Z
AHEAD_S = 10.2  # the bad producer's clock error
# A push is delivered within this long (measured: a few ms); a bar closing later must use it.
DELIVERY_S = 0.5


class AheadProducer:
    """Publishes ``symbol`` at 5 Hz stamped ``AHEAD_S`` in the future (a producer with a bad clock)."""

    def __init__(self, client: Any, map_name: str, symbol: str) -> None:
        self.map = client.get_map(map_name).blocking()
        self.key = f"asset_{symbol}_ob"
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ahead-producer", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):  # the producer's cadence (the scenario)
            self.published += 1
            ts = time.time() + AHEAD_S
            self.map.put(self.key, json.dumps({"timestamp": iso(ts), "bid_notional": [1e5, 2e5],
                                               "ask_notional": [1e5, 2e5], "_push_seq": self.published}))

    def start(self) -> AheadProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def poison(inp: Any, ts: float, seq: int) -> None:
    inp.put("asset_AAAUSDT_ob", json.dumps({"timestamp": ts, "bid_notional": [1.0, 2.0],
                                            "ask_notional": [1.0, 2.0], "_push_seq": seq}))


def test_poison_messages_never_silence_an_asset_and_bad_clocks_show(hz_cluster: HzCluster, hz_client: Any,
                                                                     map_suffix: str, tmp_path: Path, capsys) -> None:
    in_name = "DOLPHIN_FEATURES" + map_suffix
    inp = hz_client.get_map(in_name).blocking()
    feeder = ControlledFeeder(hz_client, in_name, DEFAULT_SYMBOLS).start()
    ahead = AheadProducer(hz_client, in_name, "EEEUSDT")
    worker_id = "t-ordering" + map_suffix

    def h_now() -> dict[str, Any]:
        return health(hz_client, map_suffix, worker_id) or {}

    def next_bar_after(t: float) -> dict[str, Any]:
        """The first record of a bar closing at least DELIVERY_S after unix time ``t``."""
        k = int((t + DELIVERY_S) // BAR_S) + 1
        wait_for(lambda: (h := h_now()) and h.get("last_bar_idx", -1) >= k, 15, f"bar {k}")
        return records(hz_client, map_suffix)[k]

    try:
        with WorkerProcess(["--bar-seconds", str(BAR_S), "--worker-id", worker_id, "--retain-bars", "200",
                            "--clock-offset-warn-s", "2"], worker_env(hz_cluster, map_suffix), tmp_path) as w:
            wait_for(lambda: (h := h_now()) and h["bars_written"] >= 2 and h["n_present"] == 4, 30,
                     "bars with every asset")

            # 1. A 1971 timestamp under a higher seq: rejected, the next pushes used at once.
            seq_before = feeder._seq["AAAUSDT"]
            t1 = time.time()
            poison(inp, YEAR_1971, seq_before + 1000)
            rec = next_bar_after(t1)
            assert "AAAUSDT" in rec["symbols"], rec["producer"]
            assert seq_before < asset_view(rec)["AAAUSDT"]["seq"] < seq_before + 1000
            wait_for(lambda: h_now()["events"]["rejected"].get("stale_timestamp") == 1, 10, "stale_timestamp")

            # 2. _push_seq = 2^62 (legal): accepted as a jump, the producer's next pushes (lower seqs,
            # newer timestamps) used in the very next bar.
            seq_before = feeder._seq["AAAUSDT"]
            t2 = time.time()
            poison(inp, t2, 2**62)
            rec = next_bar_after(t2)
            assert "AAAUSDT" in rec["symbols"], rec["producer"]
            assert seq_before < asset_view(rec)["AAAUSDT"]["seq"] < 2**62
            wait_for(lambda: (ev := h_now()["events"]) and ev["seq_jumps"] >= 1 and ev["seq_resets"] >= 1, 10,
                     "seq jump and reset counted")

            # 3. A producer whose clock is 10.2 s ahead: every push rejected, and said so.
            ahead.start()
            h = wait_for(lambda: (h := h_now()) and "EEEUSDT" in h["producer_clock"]["all_rejected"] and h, 15,
                         "the ahead producer listed")
            note = h["producer_clock"]["all_rejected"]["EEEUSDT"]
            assert note["reason"] == "future_timestamp" and note["note"].endswith("s ahead, all pushes rejected")
            assert -AHEAD_S - 0.5 < h["producer_clock"]["flagged"]["EEEUSDT"] < -AHEAD_S + 0.5
            assert set(h["producer_clock"]["flagged"]) == {"EEEUSDT"}  # the good producers are not flagged
            assert h["n_assets"] == 4 and "EEEUSDT" not in h["stale_assets"]  # no other view shows it

            args = ["--members", ",".join(hz_cluster.members), "--cluster", hz_cluster.cluster_name,
                    "--map-suffix", map_suffix]
            capsys.readouterr()
            cli.main(["status", "--json", *args])
            report = json.loads(capsys.readouterr().out)
            (ws,) = [x for x in report["workers"] if x["worker_id"] == worker_id]
            assert ws["all_rejected"]["EEEUSDT"].startswith("clock 10.")
            assert any("every push rejected: EEEUSDT" in r for r in report["reasons"]), report["reasons"]
            by = {a["symbol"]: a for a in report["assets"]}
            assert by["EEEUSDT"]["stale"] and "all pushes rejected" in by["EEEUSDT"]["note"]
            cli.main(["status", *args])
            assert "EEEUSDT: clock 10." in capsys.readouterr().out

            ahead.stop()
            last = h_now()["last_bar_idx"]
            wait_for(lambda: h_now()["last_bar_idx"] >= last + 1, 10, "one more bar")
            assert w.stop() == 0, w.log_text()[-3000:]
    finally:
        ahead.stop()
        feeder.stop()

    recs = records(hz_client, map_suffix)
    keys = sorted(recs)
    assert_contiguous(keys)
    # No bar after the first lost an asset: neither poison message silenced AAAUSDT for a moment.
    assert all(recs[k]["n_present"] == 4 for k in keys[1:]), [(k, recs[k]["symbols"]) for k in keys]
    h = h_now()
    ev = h["events"]
    assert ev["received"] == ev["accepted"] + ev["ignored"] + ev["read_echoes"] + sum(ev["rejected"].values())
    assert ev["rejected"]["stale_timestamp"] == 1 and ev["rejected"]["future_timestamp"] >= 3
    assert set(ev["rejected"]) == {"stale_timestamp", "future_timestamp"}, ev["rejected"]
