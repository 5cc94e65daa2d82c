"""plot: a valid, non-empty PNG from a replay of the real Binance recordings, and the drawn data is the records'."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import pytest

from obf_contract.record import asset_view, dumps_record, loads_record
from obf_features_worker import cli
from obf_features_worker.engine.params import FeatureParams
from obf_features_worker.inspection.plot import build_figure, choose_assets, load_records, plot_records, regime_bands
from obf_features_worker.offline.import_binance import BandSpec, import_binance
from obf_features_worker.offline.replay import replay_records
from tests.conftest import SHARED_DATA
from tests.factories import columns

RECORDINGS = SHARED_DATA / "binance-hftbacktest"
BAND_BPS = 20.0  # within every recording's snapshot reach (see ../shared/README.md)


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory) -> Path:
    """BarRecord JSONL replayed from all four real recordings (spot + USD-M, BTC + ETH), 1 s bars."""
    files = sorted(RECORDINGS.glob("*/*.gz"))
    if not files:
        pytest.skip(f"real recordings not found in {RECORDINGS}")
    buf = io.BytesIO()
    import_binance(files, buf, BandSpec(BAND_BPS, 10))
    out = tmp_path_factory.mktemp("replay") / "bars.jsonl"
    with open(out, "wb") as fh:
        for rec in replay_records(buf.getvalue().splitlines(), 1.0, params=FeatureParams(band_span_bps=BAND_BPS)):
            fh.write(dumps_record(rec) + b"\n")
    return out


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk; asserts the signature and each chunk's CRC (PNG spec, not matplotlib)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + payload) & 0xFFFFFFFF == crc, f"bad CRC in {ctype!r}"
        chunks.append((ctype, payload))
        pos += 12 + length
    return chunks


def test_png_from_real_replay_is_valid_and_not_blank(replay_file, tmp_path):
    out = tmp_path / "sub" / "bars.png"
    rc = cli.main(["plot", "--from-file", str(replay_file), "--last", "300", "--output", str(out)])
    assert rc == 0
    data = out.read_bytes()
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (1200, 1000)  # 12 x 10 in at 100 dpi
    idat = zlib.decompress(b"".join(p for t, p in chunks if t == b"IDAT"))
    assert len(set(idat)) > 50, "image is (nearly) uniform"

    from PIL import Image

    with Image.open(out) as img:
        img.load()
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50


def test_drawn_lines_and_bands_are_the_records(replay_file):
    records = load_records(replay_file, last=400)
    assert len(records) == 400
    raw = [loads_record(line) for line in replay_file.read_bytes().splitlines() if line.strip()]
    assert [r["bar_idx"] for r in records] == [r["bar_idx"] for r in raw[-400:]]

    assets = ("BTCUSDT", "ETHUSDTPERP")
    fig = build_figure(records, assets)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    views = [asset_view(r) for r in records]
    for sym in assets:
        want = [v[sym]["signal"]["imbalance"] if sym in v else math.nan for v in views]
        got = list(lines[f"imb:{sym}"].get_ydata())
        assert len(got) == len(want)
        assert all((math.isnan(g) and math.isnan(w)) or g == w for g, w in zip(got, want, strict=True))
        want_dq = [v[sym]["placement"]["depth_quality"] if sym in v else math.nan for v in views]
        got_dq = list(lines[f"dq:{sym}"].get_ydata())
        assert all((math.isnan(g) and math.isnan(w)) or g == w for g, w in zip(got_dq, want_dq, strict=True))
    assert list(lines["agreement_pct"].get_ydata()) == [r["market"]["agreement_pct"] for r in records]
    assert list(lines["depth_velocity"].get_ydata()) == [r["macro"]["depth_velocity"] for r in records]


def test_whole_real_replay_has_stress_bands_drawn_on_every_panel(replay_file):
    records = load_records(replay_file)
    regimes = [r["macro"]["cascade_regime"] if r["macro"] else None for r in records]
    # Runs of equal non-CALM regimes, counted directly.
    runs = sum(1 for i, g in enumerate(regimes) if g in ("STRESS", "CASCADE") and (i == 0 or regimes[i - 1] != g))
    assert runs >= 1, "expected the recordings to contain at least one STRESS bar"
    fig = build_figure(records, ("BTCUSDT",))
    for ax in fig.axes:
        assert sum(1 for p in ax.patches if (p.get_gid() or "").startswith("band:")) == runs


def test_regime_bands_from_hand_made_records():
    regimes = ["CALM", "STRESS", "STRESS", "CASCADE", "CALM", None, "CASCADE"]
    recs = [{"bar_idx": 10 + i, "bar_ts": 100.0 + i, **columns({}),
             "market": None, "macro": None if g is None else {"cascade_regime": g}} for i, g in enumerate(regimes)]
    bands = [(b.regime, b.first_bar_idx, b.last_bar_idx) for b in regime_bands(recs)]
    assert bands == [("STRESS", 11, 12), ("CASCADE", 13, 13), ("CASCADE", 16, 16)]


def test_plot_records_sorts_and_reports(tmp_path):
    recs = [{"bar_idx": i, "bar_ts": float(i), **columns({"AAA": {"signal": {"imbalance": 0.1},
                                                                    "placement": {"depth_quality": 1.0}}}),
             "market": {"agreement_pct": 50.0}, "macro": {"cascade_regime": "CALM", "depth_velocity": 0.0}}
            for i in (5, 3, 4)]
    summary = plot_records(recs, tmp_path / "x.png")
    assert (summary.first_bar_idx, summary.last_bar_idx, summary.n_bars) == (3, 5, 3)
    assert summary.assets == ("AAA",)
    assert (tmp_path / "x.png").stat().st_size > 0
    with pytest.raises(ValueError):
        plot_records([], tmp_path / "empty.png")


def test_cli_exit_codes_for_bad_and_empty_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli.main(["plot", "--from-file", str(empty), "--output", str(tmp_path / "e.png")]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"bar_idx": 1}\n[1, 2]\n')
    assert cli.main(["plot", "--from-file", str(bad), "--output", str(tmp_path / "b.png")]) == 2
    assert cli.main(["plot", "--from-file", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "m.png")]) == 2
    assert cli.main(["plot", "--from-file", str(empty), "--last", "0"]) == 2
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "b.png").exists()


def test_choose_assets_ranks_by_bars_present():
    def rec(*symbols):
        return {"bar_idx": 1, "bar_ts": 1.0, **columns({s: {"signal": {"imbalance": 0.0}} for s in symbols})}

    recs = [rec("AAA", "ZZZ"), rec("AAA", "MMM", "ZZZ"), rec("ZZZ"), rec()]
    assert choose_assets(recs) == ("ZZZ", "AAA", "MMM")
    assert choose_assets(recs, max_assets=1) == ("ZZZ",)
    assert choose_assets(recs, ["MMM"]) == ("MMM",)
