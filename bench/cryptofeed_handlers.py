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
``await feed.message_handler(frame_text, conn, timestamp)`` for every book frame of the recording,
in file order. Only delta frames are timed (handler CPU only; no socket, no event-loop scheduling):
book snapshots, and the Binance frame that makes cryptofeed fetch the REST snapshot, are fed but not
timed (see ``classify``). ``orjson.loads`` of the same timed frames is timed back to back in the
same pass. A fresh Feed per pass; the median pass is kept.

``classify`` is standard-library only so bench/connectors.py can load this file (by path) and time
coby's connector on exactly the same frames.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

_HERE = Path(__file__).resolve().parent
_RECORDED_PY = _HERE.parent / "sim" / "recorded.py"

# recording prefix -> (cryptofeed exchange class path, ws file holding its book frames or None = the only one)
SUPPORTED = {
    "BINANCE": ("cryptofeed.exchanges.binance", "Binance"),
    "BINANCE_FUTURES": ("cryptofeed.exchanges.binance_futures", "BinanceFutures"),
    "KRAKEN": ("cryptofeed.exchanges.kraken", "Kraken"),
    "COINBASE": ("cryptofeed.exchanges.coinbase", "Coinbase"),
    "OKX": ("cryptofeed.exchanges.okx", "OKX"),
}


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


_MONTH_CODES = "FGHJKMNQUVXZ"  # cryptofeed's expiry form: BTC-USD-22K27 is BTC-USD-220527


def _instrument_key(symbol: str) -> str:
    """``NKN-USDT``, ``NKNUSDT``, ``XMR/USD``, ``BTC-USD-22K27``, ``BTC-USD-220527`` → one comparable form."""
    parts = symbol.upper().replace("/", "-").split("-")
    last = parts[-1]
    if len(parts) > 2 and len(last) == 5 and last[:2].isdigit() and last[3:].isdigit() and last[2] in _MONTH_CODES:
        parts[-1] = f"{last[:2]}{_MONTH_CODES.index(last[2]) + 1:02d}{last[3:]}"
    return "".join(parts)


def _instrument(prefix: str, msg) -> str | None:
    if prefix in ("BINANCE", "BINANCE_FUTURES"):
        return msg["data"]["s"]
    if prefix == "KRAKEN":
        return msg[-1]
    if prefix == "COINBASE":
        return msg.get("product_id")
    if prefix == "OKX":
        return msg["arg"].get("instId")
    return None


def classify(prefix: str, payloads: list[str], untimed: frozenset[str] = frozenset()) -> list[str | None]:
    """Per received frame of one recording (all its ws files, file order within each): ``"timed"``
    (a book delta frame: both sides are timed on exactly these), ``"fed"`` (a book frame cryptofeed
    must see but that is not timed: snapshots, and the first depth event per Binance symbol, on
    which cryptofeed 2.4.0 fetches and parses the 1000-level REST snapshot inside the handler) or
    None (not a book frame: trades, tickers, heartbeats, acks — cryptofeed, subscribed to L2_BOOK
    only, would not receive them). ``untimed``: recording symbols (``BTC-USD-220527``) whose delta
    frames are fed but not timed (instruments one side does not book, so no like-for-like figure)."""
    untimed_keys = {_instrument_key(symbol) for symbol in untimed}
    out: list[str | None] = []
    seen: set[str] = set()
    for text in payloads:
        if not isinstance(text, str):
            out.append(None)
            continue
        msg = json.loads(text)
        kind = None
        if prefix in ("BINANCE", "BINANCE_FUTURES"):
            data = msg.get("data") if isinstance(msg, dict) else None
            if isinstance(data, dict) and data.get("e") == "depthUpdate":
                symbol = data["s"]
                kind = TIMED if symbol in seen else FED
                seen.add(symbol)
        elif prefix == "KRAKEN":
            if isinstance(msg, list) and isinstance(msg[-2], str) and msg[-2].startswith("book"):
                kind = FED if ("as" in msg[1] or "bs" in msg[1]) else TIMED
        elif prefix == "COINBASE":
            if isinstance(msg, dict):
                kind = {"l2update": TIMED, "snapshot": FED}.get(msg.get("type"))
        elif prefix == "OKX" and isinstance(msg, dict) and "action" in msg and msg.get("arg", {}).get("channel") == "books":
            kind = TIMED if msg["action"] == "update" else FED
        if kind == TIMED and untimed_keys and _instrument_key(_instrument(prefix, msg) or "") in untimed_keys:
            kind = FED
        out.append(kind)
    return out


def recording_files(directory: Path, prefix: str) -> tuple[Path | None, list[Path], list[Path]]:
    number = lambda p: int(p.name.split(".")[-2])
    metadata = directory / f"{prefix}.0"
    http = sorted(directory.glob(f"{prefix}.http.*.0"), key=number)
    ws = sorted(directory.glob(f"{prefix}.ws.*.0"), key=number)
    return (metadata if metadata.exists() else None), http, ws


def book_frames(directory: Path, prefix: str, untimed: frozenset[str] = frozenset()) -> list[tuple[str, float, str]]:
    """(kind, receive time in s, frame text) of every book frame, ws files in number order."""
    _, _, ws = recording_files(directory, prefix)
    frames = []
    for path in ws:
        lines = [line for line in read_recorded(path) if line.kind == LineKind.RECEIVED]
        kinds = classify(prefix, [line.payload for line in lines], untimed)
        frames.extend((kind, line.timestamp_ns / 1e9, line.payload) for kind, line in zip(kinds, lines) if kind)
    return frames


# --- cryptofeed side --------------------------------------------------------------------------------

def _url_key(url: str) -> tuple[str, frozenset]:
    parts = urlsplit(url)
    return parts.path, frozenset(parse_qsl(parts.query))


class _Responses:
    """Recorded HTTP responses, looked up by path and query, then by path, then by ``symbol``."""

    def __init__(self, lines) -> None:
        self.lines = [(line.url, line.payload) for line in lines if line.kind == LineKind.HTTP_RESPONSE]
        self.served: list[str] = []

    def body(self, address: str) -> str:
        key = _url_key(address)
        for match in (lambda u: _url_key(u) == key, lambda u: _url_key(u)[0] == key[0],
                      lambda u: dict(key[1]).get("symbol") and dict(_url_key(u)[1]).get("symbol") == dict(key[1]).get("symbol")):
            for url, body in self.lines:
                if match(url):
                    self.served.append(address)
                    return body
        raise LookupError(f"no recorded response for {address}")


def _stand_in_http_sync(responses: _Responses):
    from cryptofeed.connection import HTTPSync
    from yapic import json as json_parser

    class RecordedHTTPSync(HTTPSync):
        def read(self, address, params=None, headers=None, json=False, text=True, uuid=None):
            body = responses.body(address)
            return json_parser.loads(body, parse_float=Decimal) if json else body

    return RecordedHTTPSync()


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


def load_symbols(cls, metadata: Path) -> int:
    """The exchange class's own symbol loading, its HTTP client serving the recorded metadata."""
    responses = _Responses(list(read_recorded(metadata)))
    saved = cls.__dict__.get("http_sync")
    cls.http_sync = _stand_in_http_sync(responses)
    try:
        return len(cls.symbol_mapping(refresh=True))
    finally:
        if saved is None:
            del cls.http_sync
        else:
            cls.http_sync = saved


async def one_pass(cls, symbols: list[str], frames, snapshots: _Responses, loads) -> dict:
    from cryptofeed.defines import L2_BOOK

    counted = [0]

    async def count(book, receipt_timestamp):
        counted[0] += 1

    feed = cls(symbols=symbols, channels=[L2_BOOK], callbacks={L2_BOOK: count}, checksum_validation=True)
    feed.http_conn = RecordedHTTPAsync(snapshots)
    connections = [StandInConnection(conn) for conn, *_ in feed.connect()]
    for conn in connections:
        await feed.subscribe(conn)
    conn = connections[0]
    handler = feed.message_handler
    clock = time.perf_counter_ns
    handler_ns = orjson_ns = timed = 0
    for kind, stamp, text in frames:
        if kind == TIMED:
            started = clock()
            await handler(text, conn, stamp)
            handler_ns += clock() - started
            started = clock()
            loads(text)
            orjson_ns += clock() - started
            timed += 1
        else:
            await handler(text, conn, stamp)
    return {"handler_ns": handler_ns, "orjson_ns": orjson_ns, "timed": timed, "callbacks": counted[0],
            "connections": len(connections), "books": len(feed._l2_book)}


def measure(directory: Path, prefix: str, passes: int, untimed: frozenset[str] = frozenset()) -> dict:
    module_name, class_name = SUPPORTED[prefix]
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        import orjson
        loads, baseline = orjson.loads, "orjson.loads"
    except ImportError:  # the venv script installs it; keep going and say so
        loads, baseline = json.loads, "json.loads (orjson missing)"
    metadata, http, _ = recording_files(directory, prefix)
    listed = load_symbols(cls, metadata)
    configuration = next(line for line in read_recorded(metadata) if line.kind == LineKind.CONFIGURATION)
    symbols = json.loads(configuration.payload)["l2_book"]
    frames = book_frames(directory, prefix, untimed)
    snapshots = _Responses([line for path in http for line in read_recorded(path)])
    results = [asyncio.run(one_pass(cls, symbols, frames, snapshots, loads)) for _ in range(passes)]
    handler_ns = statistics.median(r["handler_ns"] for r in results)
    orjson_ns = statistics.median(r["orjson_ns"] for r in results)
    timed = results[0]["timed"]
    return {
        "cryptofeed_class": f"{module_name}.{class_name}",
        "symbols_listed_by_parser": listed,
        "symbols": len(symbols),
        "book_frames_fed": len(frames),
        "frames_timed": timed,
        "l2_book_callbacks": results[0]["callbacks"],
        "books": results[0]["books"],
        "rest_snapshots_served": len(snapshots.served) // passes,
        "untimed_symbols": sorted(untimed),
        "us_per_frame": round(handler_ns / timed / 1000, 3),
        "orjson_loads_us_per_frame": round(orjson_ns / timed / 1000, 3),
        "ratio_to_orjson_loads": round(handler_ns / orjson_ns, 2),
        "baseline": baseline,
        "checksum_validation": True,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = os.environ.get("COBY_RECORDED_DIR") or str(_HERE.parent.parent / "shared" / "recorded")
    parser.add_argument("--recorded", type=Path, default=Path(default_dir), help="directory of recordings")
    parser.add_argument("--passes", type=int, default=5, help="replays per recording (median kept)")
    parser.add_argument("--only", nargs="*", default=None, help="recording prefixes (default: all supported)")
    parser.add_argument("--untimed", nargs="*", default=[], metavar="PREFIX:SYMBOL",
                        help="recording symbols fed but not timed, e.g. OKX:BTC-USD-220527")
    args = parser.parse_args(argv)
    import logging

    import cryptofeed

    logging.getLogger("feedhandler").setLevel(logging.ERROR)
    figures, failed = {}, {}
    for prefix in args.only or sorted(SUPPORTED):
        if not (args.recorded / f"{prefix}.0").exists():
            continue
        try:
            untimed = frozenset(item.split(":", 1)[1] for item in args.untimed if item.split(":", 1)[0] == prefix)
            figures[prefix] = measure(args.recorded, prefix, args.passes, untimed)
        except Exception as error:  # noqa: BLE001 - one exchange failing must not hide the others
            failed[prefix] = f"{type(error).__name__}: {error}"
            continue
        print(f"[bench.cryptofeed] {prefix:16s} {figures[prefix]['us_per_frame']:8.2f} us/frame "
              f"({figures[prefix]['ratio_to_orjson_loads']}x orjson.loads)", file=sys.stderr)
    return {
        "bench": "cryptofeed_handlers",
        "cryptofeed": getattr(cryptofeed, "__version__", None) or _dist_version("cryptofeed"),
        "passes": args.passes,
        "python": platform.python_version(),
        "frames": "book delta frames only (snapshots and the Binance REST-snapshot-triggering frame fed, not timed); "
                  "await feed.message_handler(text, conn, ts) per frame, handler CPU only",
        "exchanges": figures,
        "failed": failed,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    print(json.dumps(main()))
