"""The api actor: its binary heatmap stream, its config rules, its access rules, and every
endpoint of a running engine on the simulator (including the 4xx paths, /metrics as
Prometheus reads it, the dashboard WebSocket, and /health following a killed aggregator)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from decimal import Decimal

import aiohttp
import numpy as np
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from engine.client import BookHandle
from engine.config import ConfigError, load_config
from engine.web.app import Hub, build_app
from engine.web.health import Telemetry
from engine.web.stream import (
    INCLUDED_BIT,
    KEYFRAME,
    WIDE_INDICES,
    Column,
    ColumnDecoder,
    InstrumentStream,
    ProtocolError,
    TRADE_DTYPE,
    automatic_step,
    decode_ladder,
    encode_column,
    encode_ladder,
    moved,
    nice_step,
)
from tests.api_support import AUTH, SYMBOLS, get, get_json, reachable, simulated_supervisor
from tests.api_support import api_engine_fixture  # noqa: F401 (the api_engine fixture)
from tests.book_support import CraftedBooks
from tests.engine_support import running, unique_instance, wait_for

SIMULATED = ["binance", "okx", "bybit"]


# ---- the binary stream ------------------------------------------------------------------


def random_column(rng: np.random.Generator, sequence: int, first_row: int, rows: int, exchanges: int,
                  base: np.ndarray | None = None, changed: float = 1.0) -> Column:
    sizes = rng.exponential(1.0, (rows, exchanges)).astype(np.float32) * (rng.random((rows, exchanges)) < 0.5)
    if base is not None:
        keep = rng.random((rows, exchanges)) >= changed
        sizes = np.where(keep, base, sizes).astype(np.float32)
    trades = np.zeros(2, TRADE_DTYPE)
    trades[0] = (100.5, 0.25, 0, 1, 3)
    trades[1] = (100.25, 1.5, exchanges - 1, 2, 1)
    return Column(sequence, 1.7e12 + sequence * 100.0, first_row, 0.25, sizes,
                  rng.random(exchanges) + 100, rng.random(exchanges) + 101,
                  np.full(exchanges, 3 | INCLUDED_BIT, np.uint8), trades)


def test_columns_round_trip_as_deltas_across_window_moves_and_as_keyframes() -> None:
    rng = np.random.default_rng(1)
    decoder = ColumnDecoder()
    previous = None
    rows, exchanges = 64, 5
    first_row = 1000
    for sequence in range(1, 40):
        first_row += int(rng.integers(-20, 21)) if sequence % 5 == 0 else 0  # the window follows the mid
        base = None if previous is None else _moved(previous, first_row)
        column = random_column(rng, sequence, first_row, rows, exchanges, base, changed=0.05)
        frame = encode_column(7, column, previous)
        if previous is not None and sequence % 5:
            assert not frame[1] & KEYFRAME and len(frame) < rows * exchanges * 4 / 2, "few changes: a small delta"
        decoded = decoder.apply(frame)
        assert decoded.sequence == sequence and decoded.first_row == first_row and decoded.step == 0.25
        np.testing.assert_array_equal(decoded.sizes, column.sizes)
        np.testing.assert_array_equal(decoded.best_bid, column.best_bid)
        np.testing.assert_array_equal(decoded.state, column.state)
        assert decoded.trades.tolist() == column.trades.tolist()
        previous = column
    everything = random_column(rng, 40, first_row, rows, exchanges)
    assert encode_column(7, everything, previous)[1] & KEYFRAME, "a column that changed everywhere is a keyframe"


def _moved(column: Column, first_row: int) -> np.ndarray:
    return moved(column.sizes, column.first_row, first_row)


def test_wide_columns_use_32_bit_cell_indices() -> None:
    rng = np.random.default_rng(2)
    rows, exchanges = 4096, 20  # 81,920 cells > 65,535
    first = random_column(rng, 1, 0, rows, exchanges)
    second = random_column(rng, 2, 3, rows, exchanges, _moved(first, 3), changed=0.01)
    decoder = ColumnDecoder()
    decoder.apply(encode_column(0, first, None))
    frame = encode_column(0, second, first)
    assert frame[1] & WIDE_INDICES and not frame[1] & KEYFRAME
    np.testing.assert_array_equal(decoder.apply(frame).sizes, second.sizes)


def test_decoder_refuses_gaps_truncation_and_trailing_bytes() -> None:
    rng = np.random.default_rng(3)
    first = random_column(rng, 1, 0, 16, 2)
    second = random_column(rng, 2, 0, 16, 2, first.sizes, changed=0.1)
    third = random_column(rng, 3, 0, 16, 2, second.sizes, changed=0.1)
    decoder = ColumnDecoder()
    with pytest.raises(ProtocolError, match="does not follow"):
        decoder.apply(encode_column(0, second, first))  # a delta with nothing before it
    decoder.apply(encode_column(0, first, None))
    with pytest.raises(ProtocolError, match="does not follow"):
        decoder.apply(encode_column(0, third, second))  # column 2 was missed
    frame = encode_column(0, second, first)
    for broken in (frame[:30], frame[:-3], frame + b"\0\0\0\0"):
        fresh = ColumnDecoder()
        fresh.apply(encode_column(0, first, None))
        with pytest.raises(ProtocolError):
            fresh.apply(broken)


def test_row_heights_are_round_and_fit_the_book() -> None:
    assert [nice_step(x) for x in (0.094, 0.1, 0.26, 3, 7e-5, 1234)] == [0.1, 0.1, 0.5, 5.0, 0.0001, 2000.0]
    bids = 60000 - 0.01 * np.arange(1, 901)  # 9 USDT of levels per side, 1 cent apart
    asks = 60000 + 0.01 * np.arange(0, 900)
    # the median level is 4.5 USDT away: ±9 USDT in 3/4 of 256 rows is 0.094 a row, rounded up
    assert automatic_step(bids, asks, 256) == 0.1
    assert automatic_step(bids[::2], asks[::2], 256) == 0.1, "the span counts, not the number of levels"
    assert automatic_step(60000 - 0.01 * np.arange(1, 1101), 60000 + 0.01 * np.arange(1100), 256) == 0.2
    assert automatic_step(bids[:3], asks[:3], 256) == 0.01, "never finer than the price increment"


# ---- an instrument's stream from a real book segment ---------------------------------------


def levels_of(rng: np.random.Generator, mid_cents: int, count: int, side: int) -> list[tuple[float, dict[int, float]]]:
    levels = []
    for i in range(count):
        cents = mid_cents - side * (i + 1) if side > 0 else mid_cents + i
        sizes = {e: round(float(rng.exponential(1.0)), 5) for e in range(3) if rng.random() < 0.6} or {0: 1.0}
        levels.append((cents / 100, sizes))
    return levels


def expected_column(bids, asks, step_cents: int, first_row: int, rows: int, members: list[int]) -> np.ndarray:
    """Independently of the encoder: integer cents, so no floating-point row edges."""
    expected = np.zeros((rows, len(members)))
    for price, sizes in bids + asks:
        row = int(Decimal(repr(price)) * 100) // step_cents - first_row
        if 0 <= row < rows:
            for column, exchange in enumerate(members):
                expected[row, column] += sizes.get(exchange, 0.0)
    return expected


def test_instrument_stream_bins_every_level_into_its_row_per_member_exchange(instance: str) -> None:
    rng = np.random.default_rng(4)
    books = CraftedBooks(instance, exchanges=3, depth=400)
    try:
        members = [0, 2]  # exchange 1 does not list this instrument: it never shows
        handle = BookHandle("TEST/USDT", books.reader, {"a": 0, "b": 1, "c": 2})
        stream = InstrumentStream(0, "TEST/USDT", handle, members, rows=64, history_columns=5, step=0.05)
        decoder = ColumnDecoder()
        mid_cents = 1_000_000
        for tick in range(8):
            mid_cents += [0, 3, -2, 150, 1, -160, 2, 0][tick]  # two jumps move the window
            bids, asks = levels_of(rng, mid_cents, 300, +1), levels_of(rng, mid_cents, 300, -1)
            books.publish(bids, asks, excluded=(2,) if tick == 5 else ())
            if tick == 2:
                stream.add_trade(0, 1, 10000.0, 1.0)
                stream.add_trade(0, 1, 10001.0, 3.0)
                stream.add_trade(1, 2, 10000.0, 5.0)  # not a member: ignored
            frame = stream.tick()
            column = decoder.apply(frame)
            assert column.first_row <= mid_cents // 5 < column.first_row + 64, "the window holds the mid"
            wanted = expected_column(bids, asks, 5, column.first_row, 64, members)
            np.testing.assert_allclose(column.sizes, wanted, rtol=1e-6, atol=1e-6)
            assert column.sizes.sum() < sum(sum(s.get(e, 0) for e in members) for _, s in bids + asks), \
                "the book is wider than the window: levels outside it are left out"
            tops = [max(p for p, s in bids if s.get(e)) for e in members]
            np.testing.assert_array_equal(column.best_bid, tops)
            included = [bool(state & INCLUDED_BIT) for state in column.state]
            assert included == ([True, False] if tick == 5 else [True, True])
            if tick == 2:
                assert column.trades.tolist() == [(10000.75, 4.0, 0, 1, 2)]
            else:
                assert len(column.trades) == 0
        replay = ColumnDecoder()
        frames = stream.history()
        assert len(frames) == 5 and frames[0][1] & KEYFRAME
        for frame in frames:
            last = replay.apply(frame)
        assert last.sequence == stream.column.sequence
        np.testing.assert_array_equal(last.sizes, stream.column.sizes)
        books.publish(levels_of(rng, mid_cents, 300, +1), levels_of(rng, mid_cents, 300, -1))
        replay.apply(stream.tick())  # the next live delta follows the history
        ladder = decode_ladder(encode_ladder(0, stream.ladder(3)))
        assert ladder.bid_sizes.shape == (3, 2) and ladder.ask_price[0] > ladder.bid_price[0]
    finally:
        books.close()


# ---- config and access rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "fragment"),
    [
        ({"host": "0.0.0.0"}, "api.host = 0.0.0.0: must be a loopback host"),
        ({"host": "0.0.0.0", "allow_public": True}, "api.token"),
        ({"token": "short"}, "api.token"),
        ({"price_steps": {"XRP/USDT": 0.1}}, "unknown key 'api.price_steps.XRP/USDT'"),
        ({"port": 70000}, "api.port"),
    ],
)
def test_config_keeps_the_api_on_loopback_unless_allowed_with_a_token(api: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, env={}, overrides={"api": api})
    assert fragment in str(error.value)
    public = load_config(None, env={}, overrides={"api": {"host": "0.0.0.0", "allow_public": True,
                                                          "token": "x" * 24}})
    assert public.api.host == "0.0.0.0"


def test_without_a_token_only_loopback_host_names_are_served() -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    config = load_config(None, env={}, overrides={})
    hub = Hub(config, None, None, {}, structlog.get_logger())

    async def scenario() -> list[int]:
        async with TestClient(TestServer(build_app(config, hub))) as client:
            statuses = []
            for host in ("evil.example", "127.0.0.1:7810", "localhost", "[::1]:7810"):
                response = await client.get("/", headers={"Host": host})
                statuses.append(response.status)
            return statuses

    assert asyncio.run(scenario()) == [403, 200, 200, 200]


# ---- the running engine ----------------------------------------------------------------------


def test_every_endpoint_answers_json_and_bad_parameters_get_a_clear_4xx(api_engine) -> None:
    base = api_engine.base
    status, body = get_json(base + "/api/instruments", AUTH)
    assert status == 200
    assert [i["name"] for i in body["instruments"]] == SYMBOLS
    assert all(i["exchanges"] == SIMULATED and not i["synthetic"] for i in body["instruments"])

    status, book = get_json(base + "/api/book/BTC/USDT?depth=4", AUTH)
    assert status == 200 and len(book["bids"]) == 4 and len(book["asks"]) == 4
    assert all(level["size"] == pytest.approx(sum(level["exchanges"].values())) for level in book["bids"])
    assert book["bids"][0]["price"] > book["bids"][-1]["price"]
    assert get_json(base + "/api/book/BTC%2FUSDT", AUTH)[1]["symbol"] == "BTC/USDT", "an encoded slash works too"

    status, buckets = get_json(base + "/api/buckets/BTC/USDT", AUTH)
    assert status == 200 and len(buckets["relative"]["bids"]["size"]) == 100
    assert set(buckets["relative"]["bids"]["exchange_size"]) == set(SIMULATED)
    assert buckets["absolute"]["unit"] == 10.0  # buckets.absolute of the default config
    status, fresh = get_json(base + "/api/buckets/ETH/USDT?fresh=true", AUTH)
    assert status == 200 and "absolute" in fresh and fresh["mid"] > 0

    def exchanges_with_rates():
        reply = get_json(base + "/api/exchanges", AUTH)[1]["exchanges"]
        rates = [m["messages_per_s"] for e in reply.values() for m in e["markets"].values()]
        return reply if all(rate > 0 for rate in rates) else None

    exchanges = wait_for(exchanges_with_rates, timeout_s=20, what="message rates from two counters reports")
    assert set(exchanges) == set(SIMULATED)
    for report in exchanges.values():
        assert report["connected"] and report["in_sync"] and report["connector"]["state"] == "running"
        assert set(report["markets"]) == set(SYMBOLS)
        market = report["markets"]["BTC/USDT"]
        assert market["frames"] > 0 and market["checksum_failures"] == 0 and market["receive_lag_ms"] >= 0

    status, signals = get_json(base + "/api/signals/BTC/USDT?count=3", AUTH)
    assert status == 200 and signals["symbol"] == "BTC/USDT" and len(signals["signals"]) <= 3

    for path, code, fragment in (
        ("/api/book/XRP/USDT", 404, "no instrument 'XRP/USDT'; instruments: BTC/USDT, ETH/USDT"),
        ("/api/buckets/XRP/USDT", 404, "no instrument"),
        ("/api/signals/XRP/USDT", 404, "no instrument"),
        ("/api/book/BTC/USDT?depth=0", 400, "depth must be between 1 and 1000, not 0"),
        ("/api/book/BTC/USDT?depth=abc", 400, "depth must be an integer between 1 and 1000, not 'abc'"),
        ("/api/book/BTC/USDT?depth=1001", 400, "depth must be between 1 and 1000"),
        ("/api/book/BTC/USDT?dpeth=5", 400, "unknown query parameter 'dpeth'; allowed: depth"),
        ("/api/signals/BTC/USDT?count=0", 400, "count must be between 1 and 1000"),
        ("/api/buckets/BTC/USDT?fresh=maybe", 400, "fresh must be true or false"),
        ("/api/instruments?x=1", 400, "unknown query parameter 'x'"),
        ("/api/nothing", 404, "no such endpoint"),
    ):
        status, body = get_json(base + path, AUTH)
        assert status == code and fragment in body["error"], (path, status, body)
    refused = urllib.request.Request(base + "/health", method="POST", headers=AUTH)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(refused, timeout=10)
    assert error.value.code == 405 and "POST is not allowed on /health" in json.loads(error.value.read())["error"]
    status, _, body = get(base + "/static/../../config.py", AUTH)
    assert status in (403, 404) and b"ApiConfig" not in body
    status, _, body = get(base + "/openapi.yaml")
    assert status == 200 and b"openapi: 3" in body


def test_the_token_is_needed_for_data_but_not_for_the_page(api_engine) -> None:
    base = api_engine.base
    for path in ("/health", "/metrics", "/api/instruments", "/api/book/BTC/USDT"):
        status, headers, body = get(base + path)
        assert status == 401 and "token" in json.loads(body)["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert get(base + path, {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert get(base + path, AUTH)[0] in (200, 503)
        assert get(base + path + f"?token={api_engine.token}")[0] in (200, 503)
    status, headers, body = get(base + "/")
    assert status == 200 and b"heatmap" in body and headers["Content-Type"].startswith("text/html")
    assert get(base + "/static/app.js")[0] == 200


def test_metrics_are_prometheus_text_with_rates_latencies_resyncs_rings_and_resources(api_engine) -> None:
    def scrape() -> dict:
        status, headers, body = get(api_engine.base + "/metrics", AUTH)
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        rates = [s.value for s in families["coby_exchange_messages_per_second"].samples]
        return families if rates and all(rate > 0 for rate in rates) else None

    families = wait_for(scrape, timeout_s=20, what="metrics with message rates")

    def values(name: str, **labels: str) -> list[float]:
        return [s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]

    assert values("coby_healthy") == [1.0] and values("coby_supervisor_up") == [1.0]
    for exchange in SIMULATED:
        for symbol in SYMBOLS:
            assert values("coby_exchange_frames", exchange=exchange, symbol=symbol)[0] > 0  # _total is the counter's
            assert values("coby_exchange_in_sync", exchange=exchange, symbol=symbol) == [1.0]
            assert values("coby_exchange_receive_lag_seconds", exchange=exchange, symbol=symbol)[0] >= 0
            assert values("coby_exchange_resyncs", exchange=exchange, symbol=symbol)[0] >= 0
            assert values("coby_exchange_checksum_failures", exchange=exchange, symbol=symbol) == [0.0]
        assert 0 <= values("coby_ring_fill_ratio", ring=exchange)[0] < 1
        assert values("coby_ring_overflows", ring=exchange) == [0.0]
    for actor in ("aggregator", "api", "connector:binance"):
        assert values("coby_actor_rss_bytes", actor=actor)[0] > 10 * 2**20
        assert values("coby_actor_cpu_percent", actor=actor)[0] >= 0
        assert values("coby_actor_up", actor=actor) == [1.0]
    for symbol in SYMBOLS:
        assert 0 <= values("coby_book_age_seconds", instrument=symbol)[0] < 30
        assert 0 <= values("coby_book_publish_latency_seconds", instrument=symbol)[0] < 5


def test_the_websocket_streams_columns_ladders_and_health_and_answers_bad_messages(api_engine) -> None:
    url = api_engine.base.replace("http", "ws") + "/ws"

    async def session() -> dict:
        seen: dict = {"columns": [], "ladders": [], "errors": [], "json": []}
        async with aiohttp.ClientSession(headers=AUTH) as client:
            refused = await client.get(url, headers={"Origin": "http://evil.example", "Connection": "Upgrade",
                                                     "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            seen["foreign_origin"] = refused.status
            async with client.ws_connect(url) as socket:
                hello = await socket.receive_json(timeout=10)
                await socket.send_str("not json")
                await socket.send_str(json.dumps({"op": "subscribe", "instrument": "XRP/USDT"}))
                await socket.send_str(json.dumps({"op": "subscribe", "instrument": "BTC/USDT", "ladder_depth": 0}))
                await socket.send_str(json.dumps({"op": "fly"}))
                await socket.send_bytes(b"\x01\x02")
                await socket.send_str(json.dumps({"op": "subscribe", "instrument": "BTC/USDT", "ladder_depth": 5}))
                decoder = ColumnDecoder()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and (len(seen["columns"]) < 30 or not seen["ladders"]
                                                       or "health" not in {m["type"] for m in seen["json"]}):
                    message = await socket.receive(timeout=10)
                    if message.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(message.data)
                        (seen["errors"] if data["type"] == "error" else seen["json"]).append(data)
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        if message.data[0] == 1:
                            seen["columns"].append((decoder.apply(message.data), len(message.data)))
                        else:
                            seen["ladders"].append(decode_ladder(message.data))
        seen["hello"] = hello
        return seen

    seen = asyncio.run(session())
    assert seen["foreign_origin"] == 403
    assert seen["hello"]["type"] == "hello" and [i["name"] for i in seen["hello"]["instruments"]] == SYMBOLS
    errors = [e["error"] for e in seen["errors"]]
    assert len(errors) == 5 and "not JSON" in errors[0] and "no instrument 'XRP/USDT'" in errors[1]
    assert "ladder_depth" in errors[2] and "unknown op 'fly'" in errors[3] and "JSON text" in errors[4]
    meta = next(m for m in seen["json"] if m["type"] == "meta")
    assert meta["instrument"] == "BTC/USDT" and meta["exchanges"] == SIMULATED and meta["rows"] == 256
    health = next(m for m in seen["json"] if m["type"] == "health")
    assert set(health["exchanges"]) == set(SIMULATED)
    columns = [column for column, _ in seen["columns"]]
    sequences = [column.sequence for column in columns]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), "history, then live, no gap"
    newest = columns[-1]
    assert newest.sizes.shape == (256, 3) and newest.step > 0
    assert all(newest.sizes[:, e].sum() > 0 for e in range(3)), "every exchange's liquidity reaches the page"
    assert (newest.best_bid > 0).all() and (newest.best_ask > 0).all()
    mid_row = (newest.best_bid.max() + newest.best_ask.min()) / 2 / newest.step
    assert newest.first_row <= mid_row < newest.first_row + 256
    live_sizes = [size for _, size in seen["columns"][-10:]]
    assert np.mean(live_sizes) < 256 * 3 * 4, "live columns are deltas smaller than a keyframe"
    ladder = seen["ladders"][-1]
    assert ladder.bid_sizes.shape == (5, 3) and ladder.ask_sizes.shape == (5, 3)


def test_health_turns_503_when_the_aggregator_is_killed_and_200_after_its_restart(api_engine) -> None:
    base = api_engine.base
    status, body = get_json(base + "/health", AUTH)
    assert status == 200 and body["healthy"] and body["problems"] == []
    pid = body["aggregator"]["pid"]
    restarts = body["aggregator"]["restarts"]
    os.kill(pid, signal.SIGKILL)
    status, body = wait_for(lambda: (reply := get_json(base + "/health", AUTH))[0] == 503 and reply,
                            timeout_s=10, interval_s=0.01, what="/health 503")
    assert not body["healthy"] and any(p.startswith("aggregator:") for p in body["problems"]), body
    assert body["supervisor"]["healthy"]
    status, body = wait_for(lambda: (reply := get_json(base + "/health", AUTH))[0] == 200 and reply,
                            timeout_s=60, what="/health 200 after the restart")
    assert body["aggregator"]["pid"] != pid and body["aggregator"]["restarts"] == restarts + 1


def test_a_busy_port_keeps_the_engine_running_and_the_api_serves_once_the_port_is_free() -> None:
    supervisor, base = simulated_supervisor(unique_instance("busy"), exchanges=("binance",))
    port = int(base.rsplit(":", 1)[1])
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        with running(supervisor):
            wait_for(lambda: _actor(supervisor, "api")["state"] == "running", timeout_s=60, what="api running")
            wait_for(lambda: _actor(supervisor, "aggregator")["state"] == "running", timeout_s=60, what="aggregator")
            time.sleep(1.5)  # the first retry (after 1 s) fails too
            assert _actor(supervisor, "api")["restarts"] == 0 and supervisor.exit_code == 0
            squatter.close()
            wait_for(lambda: reachable(base + "/health"), timeout_s=40, what="the api on its port once free")
            assert _actor(supervisor, "api")["restarts"] == 0
    finally:
        squatter.close()


def _actor(supervisor, name: str) -> dict:
    return next(actor for actor in supervisor.status()["actors"] if actor["name"] == name)


def test_message_rates_and_checksum_failures_come_from_the_bus() -> None:
    telemetry = Telemetry(["kraken"])
    report = {"exchange": "kraken", "symbols": {"BTC/USDT": {"frames": 100, "last_exchange_ts": 1}}}
    telemetry.on_counters(report, now=10.0)
    telemetry.on_counters({**report, "symbols": {"BTC/USDT": {"frames": 350}}}, now=11.0)
    assert telemetry.exchanges["kraken"].rates == {"BTC/USDT": 250.0}
    telemetry.on_counters({**report, "symbols": {"BTC/USDT": {"frames": 20}}}, now=12.0)  # connector restarted
    assert telemetry.exchanges["kraken"].rates == {"BTC/USDT": 0.0}
    for reason in ("checksum", "sequence_gap", "checksum"):
        telemetry.on_status({"exchange": "kraken", "symbol": "BTC/USDT", "status": "resyncing", "reason": reason})
    telemetry.on_status({"exchange": "nowhere", "symbol": "BTC/USDT", "reason": "checksum"})  # ignored
    telemetry.on_counters({"exchange": "kraken", "symbols": "garbage"}, now=13.0)  # ignored
    assert telemetry.exchanges["kraken"].checksum_failures == {"BTC/USDT": 2}
    assert telemetry.exchanges["kraken"].status_changes == {"BTC/USDT": 3}
    assert telemetry.exchanges["kraken"].checksum_failures_of("BTC/USDT") == 2, "no counter of its own: status changes"
    telemetry.on_counters({**report, "symbols": {"BTC/USDT": {"frames": 30, "checksums_failed": 5}}}, now=14.0)
    assert telemetry.exchanges["kraken"].checksum_failures_of("BTC/USDT") == 5, "the connector's own count first"


def test_dashboards_past_max_clients_get_503() -> None:
    config = load_config(None, env={}, overrides={"api": {"max_clients": 1}})
    hub = Hub(config, None, None, {}, structlog.get_logger())
    hub.dashboards.add(object())  # one dashboard open already

    async def scenario() -> tuple[int, dict]:
        async with TestClient(TestServer(build_app(config, hub))) as client:
            response = await client.get("/ws", headers={"Host": "127.0.0.1"})
            return response.status, await response.json()

    status, body = asyncio.run(scenario())
    assert status == 503 and "1 dashboards are open already (api.max_clients)" in body["error"]
