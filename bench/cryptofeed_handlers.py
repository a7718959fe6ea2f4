"""cryptofeed 2.4.0's own message handlers on the recorded book frames (bench-only, separate venv).

Runs under ``.venv-cryptofeed`` (made by bench/cryptofeed_venv.sh: cryptofeed==2.4.0 pins
aiohttp==3.9.1, so it never goes into the project venv). It imports nothing of coby's packages:
``sim/recorded.py`` is loaded by file path, and imports only the standard library.

Driven as ../shared/docs/benchmarks.md describes: the exchange class's symbol list is loaded from
the recorded REST metadata through its own ``symbol_mapping``/``_parse_symbol_data`` (its
``http_sync`` replaced by a stand-in serving ``EXCHANGE.0``); the Feed is constructed normally
(``channels=[L2_BOOK]``, the recording's ``l2_book`` symbols, an L2_BOOK callback that only counts,
``checksum_validation=True``); its ``subscribe`` coroutine is awaited with a stand-in connection; its
``http_conn`` is replaced by one serving the recorded REST snapshots (``EXCHANGE.http.N.0``); then
``await feed.message_handler(frame, conn, timestamp)`` for every book frame of the recording, in
file order. Only book delta frames are timed (handler CPU only; no socket, no event-loop
scheduling); what else is fed, and why, is ``classify``'s and ``DRIVING_NOTES``' business.
``orjson.loads`` of the same timed frames (gunzipped first where the venue sends gzip) is timed
in the same pass, in a loop of its own after the handler's (as bench/connectors.py times it for
coby: timed between handler calls it reads ~40% slower, which understated cryptofeed's multiple). A fresh Feed per pass; the median pass is kept.

``--serve`` keeps one process for the whole comparison: bench/connectors.py writes a recording
prefix per stdin line and gets one pass's figures per stdout line, so coby's passes and
cryptofeed's alternate under the same machine load.

``classify`` is standard-library only so bench/connectors.py can load this file (by path) and time
coby's connector on exactly the same frames.

The last stdout line is one JSON object (one per pass with ``--serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

_HERE = Path(__file__).resolve().parent
_RECORDED_PY = _HERE.parent / "sim" / "recorded.py"

# recording prefix -> cryptofeed 2.4.0 exchange class (module path, class name)
SUPPORTED = {
    "BINANCE": ("cryptofeed.exchanges.binance", "Binance"),
    "BINANCE_FUTURES": ("cryptofeed.exchanges.binance_futures", "BinanceFutures"),
    "BITFINEX": ("cryptofeed.exchanges.bitfinex", "Bitfinex"),
    "BITSTAMP": ("cryptofeed.exchanges.bitstamp", "Bitstamp"),
    "COINBASE": ("cryptofeed.exchanges.coinbase", "Coinbase"),
    "GATEIO": ("cryptofeed.exchanges.gateio", "Gateio"),
    "HUOBI": ("cryptofeed.exchanges.huobi", "Huobi"),
    "KRAKEN": ("cryptofeed.exchanges.kraken", "Kraken"),
    "KUCOIN": ("cryptofeed.exchanges.kucoin", "KuCoin"),
    "OKX": ("cryptofeed.exchanges.okx", "OKX"),
}

# Recordings of exchanges cryptofeed 2.4.0 has a class for that are not compared, and why.
NOT_COMPARED = {
    "BYBIT": (
        "cryptofeed 2.4.0's Bybit class is the v2-era client (orderBook_200.100ms on /realtime and "
        "/realtime_public, /v2/public/symbols), not v5, and its handler reads the recorded v2 "
        "orderBookL2_25 frames; but coby's Bybit connector speaks v5 only and does not read the "
        "retired v2 recording (actors/connectors/bybit.py RECORDED_OPTIONS = None), so there is no "
        "coby figure to put next to it"
    ),
}

# Which frames are timed on both sides, per recording (see ``classify``).
TIMED_FRAMES = {
    "BINANCE": "depthUpdate, except each symbol's first (cryptofeed fetches and parses the REST snapshot in that call)",
    "BINANCE_FUTURES": "depthUpdate, except each symbol's first (cryptofeed fetches the REST snapshot in that call)",
    "BITFINEX": "book updates [chanId, [price, count, amount], seq]",
    "BITSTAMP": "diff_order_book data newer (microtimestamp) than the symbol's REST snapshot",
    "COINBASE": "l2update",
    "GATEIO": "spot.order_book_update, except each pair's first (cryptofeed fetches the REST snapshot in that call)",
    "HUOBI": "market.*.depth.step0 (gzip; the recorded channel has no deltas: every frame is a full book of up to 150 levels a side)",
    "KRAKEN": "book updates (no 'as'/'bs')",
    "KUCOIN": "trade.l2update, except each symbol's first (cryptofeed fetches the REST snapshot in that call)",
    "OKX": "books action=update",
}

# What had to be done beyond benchmarks.md's recipe for cryptofeed to run on a recording.
DRIVING_NOTES = {
    "BITFINEX": (
        "every frame of the connection is fed (untimed unless a book update): with SEQ_ALL the sequence "
        "number runs over every channel of the connection (ticker, trades, heartbeats), and cryptofeed "
        "raises MissingSequenceNumber on any gap; its futures pair list is served the recording's "
        "/v2/conf/pub:list:pair:future body (cryptofeed 2.4.0 asks for .../pub:list:pair:futures); "
        "cryptofeed 2.4.0 has no Bitfinex checksum (and the recording has none)"
    ),
    "BITSTAMP": (
        "subscribe() sleeps 5 s before fetching the snapshots: asyncio.sleep is a no-op during subscribe; "
        "cryptofeed drops diffs by the seconds 'timestamp', coby by 'microtimestamp', so diffs at or "
        "before the snapshot's microtimestamp are fed but timed by neither side"
    ),
    "KUCOIN": (
        "its level2 channel counts as authenticated in cryptofeed 2.4.0: placeholder API keys in the "
        "config (they only sign the recorded snapshot request); the bullet-public token POST in its "
        "constructor is answered with the recorded endpoint (wss://push-private.kucoin.com/endpoint, "
        "token TOKEN)"
    ),
    "HUOBI": "gzip binary frames fed as recorded; there are no delta frames, so full-book frames are timed",
}

# cryptofeed 2.4.0 asks some metadata routes under another name than the recording has.
RECORDED_ROUTES = {"/v2/conf/pub:list:pair:futures": "/v2/conf/pub:list:pair:future"}

# Query parameters that name the instrument of a REST snapshot request.
_SYMBOL_PARAMS = ("symbol", "currency_pair", "instId", "product_id")


def _load_recorded_module():
    spec = importlib.util.spec_from_file_location("_coby_sim_recorded", _RECORDED_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses needs the module registered
    spec.loader.exec_module(module)
    return module


_recorded = _load_recorded_module()
read_recorded, LineKind = _recorded.read_recorded, _recorded.LineKind


# --- frame classification (stdlib only; shared with bench/connectors.py) ---------------------------

TIMED, FED = "timed", "fed"

Rule = Callable[[object, dict, Mapping[str, dict]], tuple[str | None, str | None]]


_MONTH_CODES = "FGHJKMNQUVXZ"  # cryptofeed's expiry form: BTC-USD-22K27 is BTC-USD-220527


def _instrument_key(symbol: str) -> str:
    """``NKN-USDT``, ``NKNUSDT``, ``XMR/USD``, ``BTC-USD-22K27``, ``BTC-USD-220527`` → one comparable form."""
    parts = symbol.upper().replace("/", "-").split("-")
    last = parts[-1]
    if len(parts) > 2 and len(last) == 5 and last[:2].isdigit() and last[3:].isdigit() and last[2] in _MONTH_CODES:
        parts[-1] = f"{last[:2]}{_MONTH_CODES.index(last[2]) + 1:02d}{last[3:]}"
    return "".join(parts)


def decoded(payload: str | bytes) -> str | bytes:
    """The JSON text of a received frame (Huobi's arrive gzip-compressed)."""
    return zlib.decompress(payload, 16 + zlib.MAX_WBITS) if isinstance(payload, bytes) else payload


def _first_fed(state: dict, instrument: str) -> str:
    """Each instrument's first delta is fed but not timed: a REST-seeded cryptofeed class fetches
    and parses the snapshot inside that call."""
    seen = state.setdefault("seen", set())
    if instrument in seen:
        return TIMED
    seen.add(instrument)
    return FED


def _binance(msg, state, snapshots):
    data = msg.get("data") if isinstance(msg, dict) else None
    if isinstance(data, dict) and data.get("e") == "depthUpdate":
        return _first_fed(state, data["s"]), data["s"]
    return None, None


def _kraken(msg, state, snapshots):
    if isinstance(msg, list) and isinstance(msg[-2], str) and msg[-2].startswith("book"):
        return (FED if ("as" in msg[1] or "bs" in msg[1]) else TIMED), msg[-1]
    return None, None


def _coinbase(msg, state, snapshots):
    if isinstance(msg, dict):
        return {"l2update": TIMED, "snapshot": FED}.get(msg.get("type")), msg.get("product_id")
    return None, None


def _okx(msg, state, snapshots):
    if isinstance(msg, dict) and "action" in msg and msg.get("arg", {}).get("channel") == "books":
        return (TIMED if msg["action"] == "update" else FED), msg["arg"].get("instId")
    return None, None


def _bitfinex(msg, state, snapshots):
    """Every frame is fed (the SEQ_ALL sequence spans all channels); book updates are timed."""
    channels = state.setdefault("channels", {})
    if isinstance(msg, dict):
        if msg.get("event") == "subscribed":
            channels[msg["chanId"]] = (msg["channel"], msg["symbol"])
        return FED, None
    channel, symbol = channels.get(msg[0], (None, None))
    body = msg[1]
    if channel == "book" and isinstance(body, list) and body and not isinstance(body[0], list):
        return TIMED, symbol
    return FED, symbol


def _bitstamp(msg, state, snapshots):
    if not (isinstance(msg, dict) and msg.get("event") == "data" and msg.get("channel", "").startswith("diff_order_book_")):
        return None, None
    channel = msg["channel"]
    pair = channel.rsplit("_", 1)[1]
    snapshot = snapshots.get(pair)
    already_in_snapshot = snapshot is not None and int(msg["data"]["microtimestamp"]) <= int(snapshot["microtimestamp"])
    return (FED if already_in_snapshot else TIMED), pair


def _gateio(msg, state, snapshots):
    if isinstance(msg, dict) and msg.get("channel") == "spot.order_book_update" and msg.get("event") == "update":
        return _first_fed(state, msg["result"]["s"]), msg["result"]["s"]
    return None, None


def _kucoin(msg, state, snapshots):
    if isinstance(msg, dict) and msg.get("subject") == "trade.l2update":
        return _first_fed(state, msg["data"]["symbol"]), msg["data"]["symbol"]
    return None, None


def _huobi(msg, state, snapshots):
    if isinstance(msg, dict) and ".depth." in msg.get("ch", ""):
        return TIMED, msg["ch"].split(".")[1]
    return None, None


RULES: dict[str, Rule] = {
    "BINANCE": _binance,
    "BINANCE_FUTURES": _binance,
    "BITFINEX": _bitfinex,
    "BITSTAMP": _bitstamp,
    "COINBASE": _coinbase,
    "GATEIO": _gateio,
    "HUOBI": _huobi,
    "KRAKEN": _kraken,
    "KUCOIN": _kucoin,
    "OKX": _okx,
}


def classify(
    prefix: str,
    payloads: list[str | bytes],
    untimed: frozenset[str] = frozenset(),
    snapshots: Mapping[str, dict] | None = None,
) -> list[str | None]:
    """Per received frame of one recording (all its ws files, file order within each): ``"timed"``
    (a book delta frame: both sides are timed on exactly these, see ``TIMED_FRAMES``), ``"fed"``
    (a frame cryptofeed must see but that is not timed: snapshots, each symbol's first delta where
    cryptofeed fetches the REST snapshot inside the handler, Bitfinex's other channels) or None
    (not fed: trades, tickers, heartbeats, acks that an L2_BOOK-only feed would not act on).
    ``untimed``: recording symbols (``BTC-USD-220527``) whose delta frames are fed but not timed
    (instruments one side does not book, so no like-for-like figure). ``snapshots``: the recorded
    REST snapshot bodies by the last path segment of their URL (Bitstamp's pair)."""
    rule = RULES[prefix]
    untimed_keys = {_instrument_key(symbol) for symbol in untimed}
    state: dict = {}
    out: list[str | None] = []
    for payload in payloads:
        kind, instrument = rule(json.loads(decoded(payload)), state, snapshots or {})
        if kind == TIMED and untimed_keys and _instrument_key(instrument or "") in untimed_keys:
            kind = FED
        out.append(kind)
    return out


def recording_files(directory: Path, prefix: str) -> tuple[Path | None, list[Path], list[Path]]:
    number = lambda p: int(p.name.split(".")[-2])
    metadata = directory / f"{prefix}.0"
    http = sorted(directory.glob(f"{prefix}.http.*.0"), key=number)
    ws = sorted(directory.glob(f"{prefix}.ws.*.0"), key=number)
    return (metadata if metadata.exists() else None), http, ws


def snapshot_bodies(directory: Path, prefix: str) -> dict[str, dict]:
    """The recorded REST snapshot bodies by the last path segment of their URL."""
    _, http, _ = recording_files(directory, prefix)
    return {
        urlsplit(line.url).path.rstrip("/").rsplit("/", 1)[-1]: json.loads(line.payload)
        for path in http
        for line in read_recorded(path)
        if line.kind == LineKind.HTTP_RESPONSE
    }


def book_frames(
    directory: Path, prefix: str, untimed: frozenset[str] = frozenset()
) -> list[tuple[str, float, str | bytes]]:
    """(kind, receive time in s, frame as recorded) of every fed frame, ws files in number order."""
    _, _, ws = recording_files(directory, prefix)
    snapshots = snapshot_bodies(directory, prefix)
    frames = []
    for path in ws:
        lines = [line for line in read_recorded(path) if line.kind == LineKind.RECEIVED]
        kinds = classify(prefix, [line.payload for line in lines], untimed, snapshots)
        frames.extend((kind, line.timestamp_ns / 1e9, line.payload) for kind, line in zip(kinds, lines) if kind)
    return frames


# --- cryptofeed side --------------------------------------------------------------------------------

def _url_key(url: str) -> tuple[str, frozenset]:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return RECORDED_ROUTES.get(path, path), frozenset(parse_qsl(parts.query))


def _symbol_of(query: frozenset) -> str | None:
    params = dict(query)
    return next((params[name] for name in _SYMBOL_PARAMS if name in params), None)


class _Responses:
    """Recorded HTTP responses, looked up by path and query, else by path and the instrument the
    query names, else (for a request naming no instrument) by path alone."""

    def __init__(self, lines) -> None:
        self.lines = [(_url_key(line.url), line.payload) for line in lines if line.kind == LineKind.HTTP_RESPONSE]
        self.served: list[str] = []

    def body(self, address: str) -> str:
        path, query = _url_key(address)
        symbol = _symbol_of(query)
        rules = (
            lambda key: key == (path, query),
            lambda key: key[0] == path and symbol is not None and _symbol_of(key[1]) == symbol,
            lambda key: key[0] == path and symbol is None,
        )
        for matches in rules:
            for key, body in self.lines:
                if matches(key):
                    self.served.append(address)
                    return body
        raise LookupError(f"no recorded response for {address}")


def _stand_in_http_sync(responses: _Responses, posts: Mapping[str, object]):
    from cryptofeed.connection import HTTPSync
    from yapic import json as json_parser

    class RecordedHTTPSync(HTTPSync):
        def read(self, address, params=None, headers=None, json=False, text=True, uuid=None):
            body = responses.body(address)
            return json_parser.loads(body, parse_float=Decimal) if json else body

        def write(self, address, data=None, json=False, text=True, uuid=None):
            answer = posts.get(urlsplit(address).path)
            if answer is None:
                raise LookupError(f"no stand-in answer for POST {address}")
            return answer

    return RecordedHTTPSync()


@contextmanager
def _recorded_http_sync(cls, responses: _Responses, posts: Mapping[str, object]):
    """The class's synchronous HTTP client (symbol lists, KuCoin's token) serving the recording."""
    saved = cls.__dict__.get("http_sync")
    cls.http_sync = _stand_in_http_sync(responses, posts)
    try:
        yield
    finally:
        if saved is None:
            del cls.http_sync
        else:
            cls.http_sync = saved


@contextmanager
def _sleep_skipped():
    """Bitstamp's subscribe waits 5 s before its snapshot requests; nothing to wait for here."""
    real_sleep = asyncio.sleep

    async def no_wait(delay, result=None):
        return result

    asyncio.sleep = no_wait
    try:
        yield
    finally:
        asyncio.sleep = real_sleep


class RecordedHTTPAsync:
    """Replaces ``feed.http_conn``: serves the recorded REST snapshots."""

    is_open = True

    def __init__(self, responses: _Responses) -> None:
        self.responses = responses

    async def read(self, address, header=None, params=None, return_headers=False, retry_count=0, retry_delay=60):
        body = self.responses.body(address)
        return (body, {}) if return_headers else body

    async def close(self):
        pass


class StandInConnection:
    """What ``subscribe``/``message_handler`` touch of a WSAsyncConn: subscription, ids, write."""

    def __init__(self, real) -> None:
        self.subscription = real.subscription
        self.address = real.address
        self.id = real.id
        self.uuid = real.uuid
        self.sent: list[str] = []
        self.is_open = True

    async def write(self, msg: str) -> None:
        self.sent.append(msg)


class _LogCounter(logging.Handler):
    """Counts what cryptofeed logs at WARNING and above (resets, gaps, unexpected frames)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:200])


_LOG = _LogCounter()


def _ws_url(path: Path) -> str:
    return next(line.url for line in read_recorded(path) if line.kind == LineKind.WS_OPEN)


@dataclass
class Recording:
    """One exchange's recording, prepared once for cryptofeed: its class, the feed arguments, and
    the frames to feed (with the text ``orjson.loads`` is timed on)."""

    prefix: str
    cls: type
    symbols: list[str]
    listed: int
    frames: list[tuple[str, float, str | bytes, str | bytes]]  # kind, receive s, as recorded, JSON text
    metadata: _Responses
    snapshots: _Responses
    posts: dict
    feed_options: dict
    untimed: frozenset[str]


def prepare(directory: Path, prefix: str, untimed: frozenset[str] = frozenset()) -> Recording:
    module_name, class_name = SUPPORTED[prefix]
    cls = getattr(importlib.import_module(module_name), class_name)
    metadata_path, http, ws = recording_files(directory, prefix)
    metadata_lines = list(read_recorded(metadata_path))
    metadata = _Responses(metadata_lines)
    posts, feed_options = {}, {}
    if prefix == "KUCOIN":
        endpoint, _, query = _ws_url(ws[0]).partition("?")
        token = dict(parse_qsl(query)).get("token", "")
        # pingInterval is not in the recording; KuCoin's documented 18 s (it only sets a ws option)
        posts["/api/v1/bullet-public"] = {
            "data": {"token": token, "instanceServers": [{"endpoint": endpoint, "pingInterval": 18000}]}
        }
        feed_options["config"] = {"kucoin": {"key_id": "bench", "key_secret": "bench", "key_passphrase": "bench"}}
    with _recorded_http_sync(cls, metadata, posts):
        listed = len(cls.symbol_mapping(refresh=True))
    configuration = next(line for line in metadata_lines if line.kind == LineKind.CONFIGURATION)
    frames = [(kind, stamp, payload, decoded(payload)) for kind, stamp, payload in book_frames(directory, prefix, untimed)]
    snapshots = _Responses([line for path in http for line in read_recorded(path)])
    return Recording(prefix, cls, json.loads(configuration.payload)["l2_book"], listed, frames, metadata, snapshots,
                     posts, feed_options, untimed)


async def one_pass(recording: Recording, loads) -> dict:
    from cryptofeed.defines import L2_BOOK

    counted = [0]

    async def count(book, receipt_timestamp):
        counted[0] += 1

    with _recorded_http_sync(recording.cls, recording.metadata, recording.posts):
        feed = recording.cls(symbols=recording.symbols, channels=[L2_BOOK], callbacks={L2_BOOK: count},
                             checksum_validation=True, **recording.feed_options)
    feed.http_conn = RecordedHTTPAsync(recording.snapshots)
    connections = [StandInConnection(conn) for conn, *_ in feed.connect()]
    with _sleep_skipped():
        for conn in connections:
            await feed.subscribe(conn)
    conn = connections[0]
    handler = feed.message_handler
    clock = time.perf_counter_ns
    handler_ns = timed = 0
    logged = _LOG.count
    _LOG.first = []
    for kind, stamp, payload, text in recording.frames:
        if kind == TIMED:
            started = clock()
            await handler(payload, conn, stamp)
            handler_ns += clock() - started
            timed += 1
        else:
            await handler(payload, conn, stamp)
    # orjson.loads of the same frames in a loop of its own, as bench/connectors.py times it for coby
    orjson_ns = 0
    for kind, _, _, text in recording.frames:
        if kind == TIMED:
            started = clock()
            loads(text)
            orjson_ns += clock() - started
    return {"handler_ns": handler_ns, "orjson_ns": orjson_ns, "timed": timed, "callbacks": counted[0],
            "connections": len(connections), "books": len(feed._l2_book), "warnings": _LOG.count - logged, "first_warnings": _LOG.first}


def _orjson_loads():
    try:
        import orjson
        return orjson.loads, "orjson.loads"
    except ImportError:  # the venv script installs it; keep going and say so
        return json.loads, "json.loads (orjson missing)"


def summary(recording: Recording, results: list[dict]) -> dict:
    """Median figures of several passes over one recording."""
    handler_ns = statistics.median(r["handler_ns"] for r in results)
    orjson_ns = statistics.median(r["orjson_ns"] for r in results)
    timed = results[0]["timed"]
    module_name, class_name = SUPPORTED[recording.prefix]
    return {
        "cryptofeed_class": f"{module_name}.{class_name}",
        "symbols_listed_by_parser": recording.listed,
        "symbols": len(recording.symbols),
        "book_frames_fed": len(recording.frames),
        "frames_timed": timed,
        "l2_book_callbacks": results[0]["callbacks"],
        "books": results[0]["books"],
        "warnings_logged_per_pass": results[0]["warnings"],
        "first_warnings": results[0]["first_warnings"],
        "rest_snapshots_served": len(recording.snapshots.served) // len(results),
        "untimed_symbols": sorted(recording.untimed),
        "us_per_frame": round(handler_ns / timed / 1000, 3),
        "orjson_loads_us_per_frame": round(orjson_ns / timed / 1000, 3),
        "ratio_to_orjson_loads": round(handler_ns / orjson_ns, 2),
        "baseline": _orjson_loads()[1],
        "checksum_validation": True,
        "timed_frames": TIMED_FRAMES[recording.prefix],
        **({"driving_notes": DRIVING_NOTES[recording.prefix]} if recording.prefix in DRIVING_NOTES else {}),
    }


def measure(directory: Path, prefix: str, passes: int, untimed: frozenset[str] = frozenset()) -> dict:
    recording = prepare(directory, prefix, untimed)
    loads = _orjson_loads()[0]
    recording.snapshots.served.clear()
    results = [asyncio.run(one_pass(recording, loads)) for _ in range(passes)]
    return summary(recording, results)


def serve(recordings: dict[str, Recording]) -> None:
    """One pass per stdin line naming a prefix, its figures as one stdout JSON line; an empty
    line asks for the medians of every prefix's passes so far."""
    loads = _orjson_loads()[0]
    results: dict[str, list[dict]] = {prefix: [] for prefix in recordings}
    for recording in recordings.values():
        recording.snapshots.served.clear()
    for line in sys.stdin:
        prefix = line.strip()
        if not prefix:
            answer = {prefix: summary(recordings[prefix], passes) for prefix, passes in results.items() if passes}
        else:
            try:
                answer = asyncio.run(one_pass(recordings[prefix], loads))
                results[prefix].append(answer)
            except Exception as error:  # noqa: BLE001 - reported to the caller, which keeps going
                answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = os.environ.get("COBY_RECORDED_DIR") or str(_HERE.parent.parent / "shared" / "recorded")
    parser.add_argument("--recorded", type=Path, default=Path(default_dir), help="directory of recordings")
    parser.add_argument("--passes", type=int, default=5, help="replays per recording (median kept)")
    parser.add_argument("--only", nargs="*", default=None, help="recording prefixes (default: all supported)")
    parser.add_argument("--untimed", nargs="*", default=[], metavar="PREFIX:SYMBOL",
                        help="recording symbols fed but not timed, e.g. OKX:BTC-USD-220527")
    parser.add_argument("--serve", action="store_true",
                        help="prepare, print one JSON line, then run one pass per prefix read from stdin")
    args = parser.parse_args(argv)

    import cryptofeed

    feed_log = logging.getLogger("feedhandler")
    feed_log.setLevel(logging.WARNING)
    feed_log.propagate = False
    feed_log.addHandler(_LOG)
    prefixes = [prefix for prefix in (args.only or sorted(SUPPORTED)) if (args.recorded / f"{prefix}.0").exists()]
    untimed = {prefix: frozenset(item.split(":", 1)[1] for item in args.untimed if item.split(":", 1)[0] == prefix)
               for prefix in prefixes}
    figures, failed, prepared = {}, {}, {}
    for prefix in prefixes:
        try:
            if args.serve:
                prepared[prefix] = prepare(args.recorded, prefix, untimed[prefix])
            else:
                figures[prefix] = measure(args.recorded, prefix, args.passes, untimed[prefix])
        except Exception as error:  # noqa: BLE001 - one exchange failing must not hide the others
            failed[prefix] = f"{type(error).__name__}: {error}"
            continue
        if not args.serve:
            print(f"[bench.cryptofeed] {prefix:16s} {figures[prefix]['us_per_frame']:8.2f} us/frame "
                  f"({figures[prefix]['ratio_to_orjson_loads']}x orjson.loads)", file=sys.stderr)
    header = {
        "bench": "cryptofeed_handlers",
        "cryptofeed": getattr(cryptofeed, "__version__", None) or _dist_version("cryptofeed"),
        "passes": args.passes,
        "python": platform.python_version(),
        "frames": "book delta frames only (snapshots and the REST-snapshot-triggering frames fed, not timed); "
                  "await feed.message_handler(frame, conn, ts) per frame, handler CPU only",
        "not_compared": NOT_COMPARED,
        "failed": failed,
    }
    if args.serve:
        print(json.dumps({**header, "ready": sorted(prepared)}), flush=True)
        serve(prepared)
        return None
    return {**header, "exchanges": figures}


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    result = main()
    if result is not None:
        print(json.dumps(result))
