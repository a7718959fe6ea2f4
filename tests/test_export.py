"""CSV export of stored data: a known batch in SQLite, exported, read back with csv.DictReader."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.storage import snapshot_payload
from engine.storage.base import EventBatch
from engine.storage.export import EXPORTED, csv_path, export, parse_time
from engine.storage.sqlite import SqliteBackend
from shm.book import BookLayout, book_slot_dtype
from shm.records import ALL_SYMBOLS, Kind, Reason, Side, Status, empty_records

EXCHANGES = ["binance", "okx"]
SYMBOLS = ["BTC/USDT", "ÉTH/€"]
T0 = parse_time("2026-12-06T21:00:00Z")
START, END = T0, T0 + 60_000_000_000
RUN_ID = T0 - 1_000_000_000
BIG_SEQUENCE = 2**63 + 5  # a uint64 past int64: stored as a negative bit pattern, exported as the exchange gave it
FEATURES = np.array([0.1, -1.5, 3.4028235e38, 1e-45], dtype=np.float32)


def records() -> np.ndarray:
    """Ring records: two levels, a clear, an exchange-wide status, two trades, one before the range."""
    rows = empty_records(7)
    fields = ("kind", "exchange_id", "symbol_id", "side", "price", "size", "sequence", "aux", "exchange_ts",
              "receive_ts", "reason", "order_count", "flags")
    values = [
        (Kind.LEVEL, 0, 0, Side.BID, 65000.1, 0.1, BIG_SEQUENCE, 0, T0 - 7, T0 + 123_456_789, 0, 3, 0x8001),
        (Kind.LEVEL, 1, 1, Side.ASK, 3000.3, 1 / 3, 42, 0, 0, T0 + 2_000_000_000, 0, 0, 0),
        (Kind.CLEAR, 0, 1, Side.NONE, 0.0, 0.0, 43, 0, 0, T0 + 3_000_000_000, Reason.SEQUENCE_GAP, 0, 0),
        (Kind.STATUS, 1, ALL_SYMBOLS, Side.NONE, 0.0, 0.0, 0, Status.DISCONNECTED, 0, T0 + 4_000_000_000,
         Reason.DISCONNECTED, 0, 0),
        (Kind.TRADE, 0, 0, Side.ASK, 65000.2, 0.003, 0, 2**64 - 1, T0 + 4_500_000_000, T0 + 5_000_000_000, 0, 0, 0),
        (Kind.TRADE, 1, 1, Side.BID, 2999.9, 1e-8, 0, 77, T0 + 5_500_000_000, T0 + 6_000_000_000, 0, 0, 0),
        (Kind.LEVEL, 0, 0, Side.ASK, 65001.0, 2.0, 1, 0, 0, T0 - 1, 0, 0, 0),
    ]
    for index, row in enumerate(values):
        for name, value in zip(fields, row):
            rows[index][name] = value
    return rows


def snapshot(generation: int, publish_ts: int, bids: list[list[float]], asks: list[list[float]]) -> bytes:
    """The stored payload of a small consolidated book (depth 4, two exchanges)."""
    slot = np.zeros(1, dtype=book_slot_dtype(BookLayout(depth=4, exchanges=2, slots=2)))[0]
    slot["generation"], slot["publish_ts"] = generation, publish_ts
    slot["bid_levels"], slot["ask_levels"] = len(bids), len(asks)
    for side, levels in (("bids", bids), ("asks", asks)):
        for row, level in enumerate(levels):
            slot[side][row] = level
    return snapshot_payload(slot, depth=3)


def batch() -> EventBatch:
    traffic = EventBatch.from_records(records(), run_id=RUN_ID, positions=0, exchanges=EXCHANGES, symbols=SYMBOLS)
    bar_ts = T0 + 4_000_000_000
    return EventBatch(
        **{name: traffic.columns(name) for name in ("book_events", "trades", "status_events")},
        ohlcv={
            "interval_s": [1, 1, 1], "exchange": ["binance", "okx", "*"], "symbol": ["BTC/USDT"] * 3,
            "open_ts": [bar_ts] * 3, "open": [65000.2, 65000.0, 65000.0], "high": [65000.2, 65000.5, 65000.5],
            "low": [65000.2, 64999.5, 64999.5], "close": [65000.2, 65000.1, 65000.1],
            "volume": [0.003, 0.7, 0.703], "notional": [195.0006, 45500.07, 45695.0706], "trades": [1, 2, 3],
        },
        consolidated_snapshots={
            "run_id": [RUN_ID, RUN_ID], "position": [3, 6], "symbol": ["BTC/USDT", "BTC/USDT"],
            "ts": [T0 + 3_500_000_000, T0 + 6_500_000_000], "generation": [11, 12],
            "payload": [
                snapshot(11, T0 + 3_500_000_000, [[65000.1, 0.3, 2, 0.1, 0.2], [64999.9, 1.25, 1, 1.25, 0]],
                         [[65000.3, 0.5, 1, 0, 0.5]]),
                snapshot(12, T0 + 6_500_000_000, [[65000.0, 2.0, 0, 2.0, 0]], []),
            ],
        },
        features={
            "symbol": ["BTC/USDT", "BTC/USDT"], "kind": ["cnn", "rl"], "sequence": [1, 1],
            "ts": [T0 + 7_000_000_000, T0 + 7_000_000_001], "layout_version": [2, 2],
            "values": [FEATURES.tobytes(), b""],
        },
        signals={
            "symbol": ["BTC/USDT"], "kind": ["cross"], "signal_id": [9], "state": ["open"],
            "ts": [T0 + 8_000_000_000],
            "payload": [json.dumps({"id": 9, "note": 'a "quoted", comma\nand a newline', "edge_bps": 1.25})],
        },
    )


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "coby.sqlite"
    with SqliteBackend(path) as backend:
        backend.migrate()
        backend.write(batch())
    return path


@pytest.fixture
def backend(database: Path) -> Iterator[SqliteBackend]:
    with SqliteBackend(database) as opened:
        yield opened


def read_csv(directory: Path, table: str) -> list[dict[str, str]]:
    with csv_path(directory, table).open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_every_table_exported_with_exact_values(backend: SqliteBackend, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = export(backend, out, START, END)
    assert written == {"book_events": 4, "trades": 2, "status_events": 1, "ohlcv": 3,
                       "consolidated_snapshots": 2, "features": 2, "signals": 1}
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{name}.csv" for name in EXPORTED)

    level, other_level, clear, status = read_csv(out, "book_events")
    assert list(level)[:4] == ["run_id", "position", "exchange", "symbol"]
    assert (level["kind"], level["side"], level["reason"]) == ("LEVEL", "BID", "NONE")
    assert int(level["receive_ts"]) == T0 + 123_456_789
    assert level["receive_time"] == "2026-12-06T21:00:00.123456789Z"
    assert parse_time(level["receive_time"]) == int(level["receive_ts"])
    assert np.datetime64(level["receive_time"].rstrip("Z"), "ns").astype(np.int64) == T0 + 123_456_789
    assert level["exchange_time"] == "2026-12-06T20:59:59.999999993Z"
    assert (int(level["sequence"]), int(level["flags"]), int(level["order_count"])) == (BIG_SEQUENCE, 0x8001, 3)
    assert float(level["price"]) == 65000.1 and float(other_level["size"]) == 1 / 3
    assert other_level["exchange_ts"] == "0" and other_level["exchange_time"] == ""
    assert (clear["kind"], clear["side"], clear["reason"]) == ("CLEAR", "NONE", "SEQUENCE_GAP")
    assert (status["kind"], status["symbol"], status["reason"]) == ("STATUS", "", "DISCONNECTED")
    assert int(status["aux"]) == Status.DISCONNECTED

    trade, small_trade = read_csv(out, "trades")
    assert (trade["side"], int(trade["trade_id"]), trade["exchange_time"]) == ("ASK", 2**64 - 1,
                                                                             "2026-12-06T21:00:04.500000000Z")
    assert float(small_trade["size"]) == 1e-8 and small_trade["symbol"] == "ÉTH/€"

    (status_row,) = read_csv(out, "status_events")
    assert (status_row["status"], status_row["reason"], status_row["symbol"]) == ("DISCONNECTED", "DISCONNECTED", "")
    assert status_row["time"] == "2026-12-06T21:00:04.000000000Z"

    bars = read_csv(out, "ohlcv")
    assert [bar["exchange"] for bar in bars] == ["*", "binance", "okx"]  # key order: open_ts, interval, exchange
    assert float(bars[0]["notional"]) == 45695.0706 and bars[0]["open_time"] == "2026-12-06T21:00:04.000000000Z"

    with_ask, without_ask = read_csv(out, "consolidated_snapshots")
    assert "payload" not in with_ask
    assert {name: with_ask[name] for name in ("generation", "publish_ts", "best_bid", "best_bid_size", "best_ask",
                                              "best_ask_size", "bid_levels", "ask_levels")} == {
        "generation": "11", "publish_ts": str(T0 + 3_500_000_000), "best_bid": "65000.1", "best_bid_size": "0.3",
        "best_ask": "65000.3", "best_ask_size": "0.5", "bid_levels": "2", "ask_levels": "1"}
    assert with_ask["publish_time"] == with_ask["time"] == "2026-12-06T21:00:03.500000000Z"
    assert (without_ask["best_ask"], without_ask["best_ask_size"], without_ask["ask_levels"]) == ("", "", "0")

    cnn, rl = read_csv(out, "features")
    values = [float(text) for text in cnn["values"].split(" ")]
    assert values == FEATURES.astype(np.float64).tolist()
    assert np.array_equal(np.array(cnn["values"].split(), dtype=np.float32), FEATURES)
    assert rl["values"] == ""

    (signal,) = read_csv(out, "signals")
    assert json.loads(signal["payload"])["note"] == 'a "quoted", comma\nand a newline'


def test_range_is_half_open_and_in_key_order(backend: SqliteBackend, tmp_path: Path) -> None:
    written = export(backend, tmp_path, T0 + 2_000_000_000, T0 + 5_000_000_000, tables=["book_events", "trades"])
    assert written == {"book_events": 3, "trades": 0}
    assert [row["kind"] for row in read_csv(tmp_path, "book_events")] == ["LEVEL", "CLEAR", "STATUS"]
    assert read_csv(tmp_path, "trades") == []
    assert not csv_path(tmp_path, "ohlcv").exists()


def test_exchange_filter_keeps_consolidated_data_only_when_star_is_asked(backend: SqliteBackend,
                                                                         tmp_path: Path) -> None:
    venue = export(backend, tmp_path / "venue", START, END, exchanges=["binance"])
    assert venue == {"book_events": 2, "trades": 1, "status_events": 0, "ohlcv": 1,
                     "consolidated_snapshots": 0, "features": 0, "signals": 0}
    assert list(read_csv(tmp_path / "venue", "features")) == []
    assert csv_path(tmp_path / "venue", "features").read_text().startswith("symbol,kind,sequence,ts,time,")

    with_star = export(backend, tmp_path / "star", START, END, exchanges=["binance", "*"])
    assert with_star == {"book_events": 2, "trades": 1, "status_events": 0, "ohlcv": 2,
                         "consolidated_snapshots": 2, "features": 2, "signals": 1}
    assert [bar["exchange"] for bar in read_csv(tmp_path / "star", "ohlcv")] == ["*", "binance"]


def test_symbol_filter_keeps_exchange_wide_events(backend: SqliteBackend, tmp_path: Path) -> None:
    written = export(backend, tmp_path, START, END, tables=["book_events", "status_events", "trades", "features"],
                     symbols=["ÉTH/€"])
    assert written == {"book_events": 3, "status_events": 1, "trades": 1, "features": 0}
    assert [row["symbol"] for row in read_csv(tmp_path, "book_events")] == ["ÉTH/€", "ÉTH/€", ""]


def test_tiny_chunks_write_the_same_files(backend: SqliteBackend, tmp_path: Path) -> None:
    whole = export(backend, tmp_path / "whole", START, END)
    chunked = export(backend, tmp_path / "chunked", START, END, chunk_rows=1)
    assert whole == chunked
    for table in EXPORTED:
        assert csv_path(tmp_path / "chunked", table).read_bytes() == csv_path(tmp_path / "whole", table).read_bytes()


def test_failed_export_leaves_no_partial_file(backend: SqliteBackend, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A read failing after the first chunk keeps the previous file and leaves nothing half-written."""
    out = tmp_path / "out"
    export(backend, out, START, END, tables=["book_events"])
    before = csv_path(out, "book_events").read_bytes()

    def failing_read(*arguments, **options) -> Iterator[np.ndarray]:
        yield next(SqliteBackend.read(backend, *arguments, **options))
        raise OSError("disk went away")

    monkeypatch.setattr(backend, "read", failing_read)
    with pytest.raises(OSError, match="disk went away"):
        export(backend, out, START, END, tables=["book_events"], chunk_rows=1)
    assert [path.name for path in out.iterdir()] == ["book_events.csv"]
    assert csv_path(out, "book_events").read_bytes() == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tables": ["book_events", "orders"]}, "unknown table 'orders'"),
        ({"tables": []}, "no tables to export"),
        ({"start_ns": END, "end_ns": END}, "the time range is empty"),
        ({"exchanges": "binance"}, "exchanges must be a list of names"),
        ({"chunk_rows": 0}, "chunk_rows must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(backend: SqliteBackend, tmp_path: Path,
                                                             arguments: dict, message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        export(backend, out, **{"start_ns": START, "end_ns": END, **arguments})
    assert not out.exists()


def test_output_that_is_a_file_is_refused(backend: SqliteBackend, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    with pytest.raises(ValueError, match="is not a directory"):
        export(backend, target, START, END)
    assert target.read_text() == "mine"


def test_parse_time_takes_iso_and_nanoseconds() -> None:
    assert parse_time("2026-12-06") == parse_time("2026-12-06T00:00:00Z") == T0 - 21 * 3_600_000_000_000
    assert parse_time("2026-12-06T21:00:00") == T0 == parse_time("2026-12-06T23:00:00+02:00")
    assert parse_time("2026-12-06T21:00:00.5Z") == T0 + 500_000_000
    assert parse_time(str(T0 + 1)) == T0 + 1
    for bad in ("yesterday", "2026-13-01", "2026-12-06T21:00:00.1234567891Z", ""):
        with pytest.raises(ValueError):
            parse_time(bad)


def coby(config: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "--config", str(config), *arguments],
                          capture_output=True, text=True, timeout=60)


def test_cli_exports_from_the_configured_database(database: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  sqlite_path: {json.dumps(str(database))}\n")
    out = tmp_path / "csv"
    result = coby(config, "export", "--from", "2026-12-06T21:00:00Z", "--to", str(END), "--out", str(out),
                  "--tables", "trades,ohlcv", "--exchanges", "okx,*", "--symbols", "BTC/USDT,ÉTH/€")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"trades: 1 rows -> {out / 'trades.csv'}",
        f"ohlcv: 2 rows -> {out / 'ohlcv.csv'}",
    ]
    assert [row["exchange"] for row in read_csv(out, "ohlcv")] == ["*", "okx"]


def test_cli_bad_time_ends_with_one_line(database: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  sqlite_path: {json.dumps(str(database))}\n")
    bad = coby(config, "export", "--from", "yesterday", "--to", str(END), "--out", str(tmp_path / "csv"))
    assert bad.returncode == 2
    assert not (tmp_path / "csv").exists()
    assert bad.stderr.strip().splitlines() == [
        "coby: export: time 'yesterday' is neither ISO-8601 (2026-12-06T21:00:00Z, 2026-12-06) nor integer "
        "nanoseconds"
    ]
