"""A small Nautilus harness for the integration tests: a BacktestEngine with a clock-driving
data stream, and a strategy that records every feature object it receives."""

from typing import Any

from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.core.data import Data
from nautilus_trader.model.custom import customdataclass
from nautilus_trader.model.data import CustomData, DataType
from nautilus_trader.model.identifiers import ClientId, TraderId
from nautilus_trader.trading.strategy import Strategy

from obf_contract.record import asset_view
from obf_nautilus.data import OBAssetFeatures, OBBarFeatures

CLOCK_CLIENT = ClientId("CLOCK")  # nobody subscribes: its data only moves the backtest clock


@customdataclass
class ClockTick(Data):  # type: ignore[misc]
    n: int = 0


def clock_ticks(first_ns: int, last_ns: int, step_ns: int) -> list[Any]:
    """One tick every ``step_ns`` from first_ns to last_ns inclusive (drives the simulated clock)."""
    return [CustomData(DataType(ClockTick), ClockTick(t, t, n=i))
            for i, t in enumerate(range(first_ns, last_ns + 1, step_ns))]


class FeatureRecorder(Strategy):  # type: ignore[misc]
    """Subscribes to OBBarFeatures and OBAssetFeatures (from ``client_id``, or the message bus when
    None) and keeps what arrives: bars by bar_idx and assets by (bar_idx, symbol), plus duplicates."""

    def __init__(self, client_id: ClientId | None = None) -> None:
        super().__init__(StrategyConfig(strategy_id="OBF-RECORDER-001"))
        self.client_id = client_id
        self.bars: dict[int, Any] = {}
        self.assets: dict[tuple[int, str], Any] = {}
        self.duplicates = 0
        self.order_errors = 0  # an asset arriving after its bar's OBBarFeatures

    def on_start(self) -> None:
        self.subscribe_data(DataType(OBAssetFeatures), client_id=self.client_id)
        self.subscribe_data(DataType(OBBarFeatures), client_id=self.client_id)

    def on_data(self, data: Any) -> None:
        if isinstance(data, OBBarFeatures):
            self.duplicates += data.bar_idx in self.bars
            self.bars[data.bar_idx] = data
        elif isinstance(data, OBAssetFeatures):
            key = (data.bar_idx, data.symbol)
            self.duplicates += key in self.assets
            self.order_errors += data.bar_idx in self.bars
            self.assets[key] = data


def new_engine() -> BacktestEngine:
    return BacktestEngine(BacktestEngineConfig(trader_id=TraderId("OBF-TESTER-001"),
                                               logging=LoggingConfig(bypass_logging=True)))


def assert_bar_equals_record(bar: Any, rec: dict[str, Any]) -> None:
    """The published bar object carries exactly the record's market and macro values."""
    assert bar.resolution == "exact" and bar.used_bar_idx == rec["bar_idx"] and bar.age_bars == 0
    assert bar.n_present == rec["n_present"] and bar.degraded == rec["degraded"]
    for group in ("market", "macro"):
        assert rec[group] is not None
        got = {k: getattr(bar, f"{group}_{k}") for k in rec[group]}
        assert got == rec[group], f"bar {rec['bar_idx']} {group}"


def assert_assets_equal_record(assets: dict[tuple[int, str], Any], rec: dict[str, Any]) -> None:
    """One object per asset of the record, with exactly its placement and signal values."""
    idx = rec["bar_idx"]
    got_symbols = {sym for (i, sym) in assets if i == idx}
    assert got_symbols == set(rec["symbols"]), f"bar {idx} assets"
    for sym, a in asset_view(rec).items():
        obj = assets[idx, sym]
        assert obj.present and obj.resolution == "exact"
        for group in ("placement", "signal"):
            assert {k: getattr(obj, f"{group}_{k}") for k in a[group]} == a[group], f"bar {idx} {sym} {group}"
