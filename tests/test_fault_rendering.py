"""The venue-generic fault rendering (sim.faults) and the connector's bad-frame log, in process."""

from __future__ import annotations

import gzip

import orjson

from actors.connector import BadFrameLog, frame_sample
from sim import faults


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event: str, **fields) -> None:
        self.lines.append((event, fields))


def test_a_level_is_found_in_any_venue_shape_and_its_value_replaced() -> None:
    shapes = {
        "binance": {"e": "depthUpdate", "b": [["30000.50000000", "0.05000000"]], "a": []},
        "kraken": {"channel": "book", "data": [{"bids": [{"price": 30000.5, "qty": 0.05}]}]},
        "bitfinex": [17, [30000.5, 1, -0.05]],
    }
    for venue, message in shapes.items():
        frame = orjson.dumps(message).decode()
        replaced = faults.replace_level_value(frame, 30000.5, 0.05, "price", "NaN")
        assert replaced is not None and "NaN" in replaced and "30000.5" not in replaced, venue
        assert faults.replace_level_value(frame, 2.0, 0.05, "price", "NaN") is None, venue


def test_numbers_get_a_bare_token_and_gzip_frames_stay_gzip() -> None:
    frame = gzip.compress(orjson.dumps({"tick": {"bids": [[30000.5, 0.05]]}}))
    replaced = faults.replace_level_value(frame, 30000.5, 0.05, "size", "-5")
    assert isinstance(replaced, bytes)
    assert gzip.decompress(replaced) == b'{"tick":{"bids":[[30000.5,-5]]}}'


def test_an_unknown_symbol_copy_renames_the_base_in_every_spelling() -> None:
    frame = '{"stream":"btcusdt@depth","data":{"s":"BTCUSDT","b":[]},"arg":{"instId":"BTC-USDT"}}'
    assert faults.rename_base(frame, "BTC") == (
        '{"stream":"zzzusdt@depth","data":{"s":"ZZZUSDT","b":[]},"arg":{"instId":"ZZZ-USDT"}}'
    )
    assert faults.rename_base('{"s":"ETHUSDT"}', "BTC") is None


def test_a_large_frame_is_valid_json_of_about_the_size_asked() -> None:
    frame = faults.large_frame(10 * 2**20)
    assert abs(len(frame) - 10 * 2**20) < 16 and orjson.loads(frame)["padding"][:3] == "xxx"


def test_bad_frames_are_logged_once_with_a_sample_then_summarised_once_a_minute() -> None:
    log = RecordingLog()
    bad = BadFrameLog(log, interval_s=60.0)
    bad.rejected("connection 0", '{"stream":"broken', now=100.0)
    for second in range(1, 50):
        bad.rejected("connection 0", "x" * 1000, now=100.0 + second)
    bad.rejected("connection 1", b"\xff\x00", now=120.0)
    bad.rejected("connection 0", "later", now=161.0)
    assert [(event, fields["source"], fields["count"]) for event, fields in log.lines] == [
        ("bad_frame_dropped", "connection 0", 1),
        ("bad_frame_dropped", "connection 1", 1),
        ("bad_frames_dropped", "connection 0", 50),
    ]
    assert log.lines[0][1]["sample"] == '{"stream":"broken' and bad.total == 52
    assert frame_sample("y" * 1000).endswith("… (1000 bytes)") and len(frame_sample("y" * 1000)) < 330
