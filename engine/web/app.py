"""The api actor's aiohttp application: the dashboard, the HTTP API, /health, /metrics and the
dashboard's WebSocket (docs/api.md is the reference; engine/web/openapi.yaml describes it).

Access: when ``api.token`` is set, every data endpoint (``/api/*``, ``/ws``, ``/health``,
``/metrics``) needs it, as ``Authorization: Bearer <token>`` or ``?token=<token>`` (a browser
cannot add a header to a WebSocket); the static page itself holds no data and is served to
anyone. Without a token (loopback only, by config rule), requests must name a loopback
``Host``, so a web page elsewhere cannot reach the API through DNS rebinding; and a WebSocket
whose ``Origin`` is another site is refused in every case.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from engine.client import Engine, PriceBuckets
from engine.config import Config, is_loopback_host
from engine.control import ControlError
from engine.render import book_json
from engine.web.health import HealthModel
from engine.web.stream import PROTOCOL_VERSION, InstrumentStream, encode_ladder

STATIC_DIR = Path(__file__).with_name("static")
OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")
LADDER_DEPTH_DEFAULT = 15
LADDER_DEPTH_MAX = 100
MAX_CLIENT_MESSAGE_BYTES = 4096


class BadRequest(web.HTTPBadRequest):
    """A 400 whose JSON body says which parameter is wrong and what it may be."""

    def __init__(self, message: str) -> None:
        super().__init__(text=_json({"error": message}), content_type="application/json")


def _json(payload: Any) -> str:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                        default=_plain).decode()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__}")


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(text=_json(payload), status=status, content_type="application/json")


def integer_parameter(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer between {low} and {high}, not {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, not {value}")
    return value


def boolean_parameter(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name} must be true or false, not {raw!r}")
    return raw in ("true", "1")


def only_parameters(request: web.Request, *allowed: str) -> None:
    unknown = sorted(set(request.query) - {*allowed, "token"})
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {listed}")


# ---- dashboards -----------------------------------------------------------------------


@dataclass(eq=False)
class Dashboard:
    """One open dashboard: what it watches and the frames waiting to be written to it."""

    socket: web.WebSocketResponse
    buffer_limit: int
    stream: InstrumentStream | None = None
    ladder_depth: int = LADDER_DEPTH_DEFAULT
    needs_keyframe: bool = True
    pending: deque = field(default_factory=deque)
    pending_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, frame: bytes | str) -> None:
        self.pending.append(frame)
        self.pending_bytes += len(frame)
        self.wake.set()

    def offer_column(self, frame: bytes, stream: InstrumentStream) -> bool:
        """Queue this tick's column unless the dashboard is too far behind; False if skipped.
        A skipped column breaks the delta chain, so the next one it gets is a keyframe."""
        if self.needs_keyframe:
            frame = stream.keyframe()
        if self.pending_bytes + len(frame) > self.buffer_limit:
            self.needs_keyframe = True
            return False
        self.needs_keyframe = False
        self.send(frame)
        return True


class Hub:
    """The dashboards and what they are sent: columns each tick, ladders, health, signals."""

    def __init__(self, config: Config, engine: Engine, health: HealthModel,
                 streams: dict[str, InstrumentStream], log: Any) -> None:
        self.config = config
        self.engine = engine
        self.health = health
        self.streams = streams
        self.log = log
        self.dashboards: set[Dashboard] = set()
        self.stats = {"bytes_sent": 0, "frames_sent": 0, "columns_skipped": 0, "requests": 0}

    def watching(self, stream: InstrumentStream) -> list[Dashboard]:
        return [dashboard for dashboard in self.dashboards if dashboard.stream is stream]

    def tick(self) -> None:
        """One heatmap column per instrument (kept for history even with nobody watching)."""
        for stream in self.streams.values():
            frame = stream.tick()
            if frame is None:
                continue
            for dashboard in self.watching(stream):
                if not dashboard.offer_column(frame, stream):
                    self.stats["columns_skipped"] += 1

    def send_ladders(self) -> None:
        """Encoded once per instrument and depth, whoever asks for it."""
        frames: dict[tuple[str, int], bytes | None] = {}
        for dashboard in self.dashboards:
            stream = dashboard.stream
            if stream is None:
                continue
            key = (stream.name, dashboard.ladder_depth)
            if key not in frames:
                ladder = stream.ladder(dashboard.ladder_depth)
                frames[key] = encode_ladder(stream.index, ladder) if ladder is not None else None
            if frames[key] is not None and dashboard.pending_bytes < dashboard.buffer_limit:
                dashboard.send(frames[key])

    def send_health(self) -> None:
        """Health, and each of the instrument's exchanges with its state in that market: one
        message per instrument, the same text to all of its dashboards."""
        if not self.dashboards:
            return
        healthy, body = self.health.health(time.monotonic())
        exchanges = self.health.exchanges()
        messages: dict[str, str] = {}
        for dashboard in self.dashboards:
            stream = dashboard.stream
            if stream is None or dashboard.pending_bytes >= dashboard.buffer_limit:
                continue
            if stream.name not in messages:
                members = self.engine.exchanges_of(stream.name)
                messages[stream.name] = _json({
                    "type": "health", "healthy": healthy, "problems": body["problems"],
                    "exchanges": {
                        name: {**{key: exchanges[name][key] for key in ("connector", "connected", "in_sync")},
                               "markets": {market: value for market, value in exchanges[name]["markets"].items()
                                           if market == stream.name}}
                        for name in members
                    },
                })
            dashboard.send(messages[stream.name])

    def on_trade(self, symbol: str, message: dict[str, Any]) -> None:
        stream = self.streams.get(symbol)
        exchange = self.health.exchange_ids.get(message.get("exchange"))
        price, size = message.get("price"), message.get("size")
        if stream is None or exchange is None or not isinstance(price, float | int) or not isinstance(size, float | int):
            return
        side = {"bid": 1, "ask": 2}.get(message.get("side"), 0)  # aggressor: bid = buyer took the ask
        stream.add_trade(exchange, side, float(price), float(size))

    def on_signal(self, symbol: str, message: dict[str, Any]) -> None:
        stream = self.streams.get(symbol)
        if stream is None:
            return
        watching = self.watching(stream)
        if watching:
            text = _json({"type": "signal", "signal": message})
            for dashboard in watching:
                dashboard.send(text)

    def counters(self) -> dict[str, float]:
        return {
            "coby_api_dashboards": len(self.dashboards),
            "coby_api_ws_bytes_sent_total": self.stats["bytes_sent"],
            "coby_api_ws_frames_sent_total": self.stats["frames_sent"],
            "coby_api_ws_columns_skipped_total": self.stats["columns_skipped"],
            "coby_api_requests_total": self.stats["requests"],
        }

    def instruments(self) -> list[dict[str, Any]]:
        listed = []
        markets = set(self.engine.symbols)
        for name, stream in self.streams.items():
            column = stream.column
            entry = {
                "name": name,
                "index": stream.index,
                "synthetic": name not in markets,
                "exchanges": self.engine.exchanges_of(name),
                "price_step": stream.step,
                "generation": stream.generation if stream.generation >= 0 else None,
            }
            book = self.engine.snapshot(name)
            entry.update(best_bid=book.best_bid, best_ask=book.best_ask, publish_ts=book.publish_ts,
                         mid=(book.best_bid + book.best_ask) / 2 if book.best_bid and book.best_ask else None,
                         heatmap_columns=column.sequence if column else 0)
            listed.append(entry)
        return listed


# ---- the application --------------------------------------------------------------------


def build_app(config: Config, hub: Hub) -> web.Application:
    app = web.Application(middlewares=[_errors(hub), _access(config)], client_max_size=MAX_CLIENT_MESSAGE_BYTES)
    handlers = _Handlers(config, hub)
    app.router.add_get("/", handlers.index)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    app.router.add_get("/openapi.yaml", handlers.openapi)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/api/instruments", handlers.instruments)
    app.router.add_get("/api/book/{symbol:.+}", handlers.book)
    app.router.add_get("/api/buckets/{symbol:.+}", handlers.buckets)
    app.router.add_get("/api/exchanges", handlers.exchanges)
    app.router.add_get("/api/signals/{symbol:.+}", handlers.signals)
    app.router.add_get("/ws", handlers.websocket)
    return app


PUBLIC_PATHS = ("/", "/openapi.yaml")


def _access(config: Config) -> Callable:
    token = config.api.token.encode()

    @web.middleware
    async def access(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        public = request.path in PUBLIC_PATHS or request.path.startswith("/static/")
        if not token and not _loopback_name(request.host):
            raise web.HTTPForbidden(
                text=_json({"error": f"Host {request.host!r} is not a loopback name: this API serves only "
                                     "http://127.0.0.1 and http://localhost without a token"}),
                content_type="application/json",
            )
        origin = request.headers.get("Origin")
        if request.path == "/ws" and origin and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text=_json({"error": f"WebSocket from another origin ({origin}) refused"}),
                                    content_type="application/json")
        if token and not public:
            given = request.query.get("token", "")
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                given = header.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token):
                raise web.HTTPUnauthorized(
                    text=_json({"error": "a valid token is needed: Authorization: Bearer <token>, or ?token=<token>"}),
                    content_type="application/json", headers={"WWW-Authenticate": 'Bearer realm="coby"'},
                )
        return await handler(request)

    return access


def _loopback_name(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    return is_loopback_host(name)


def _errors(hub: Hub) -> Callable:
    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        hub.stats["requests"] += 1
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.content_type == "application/json" or error.status < 400:
                raise
            message = {404: f"no such endpoint: {request.path} (see /openapi.yaml)",
                       405: f"{request.method} is not allowed on {request.path}"}.get(error.status, error.reason)
            return json_response({"error": message}, error.status)
        except Exception:
            hub.log.exception("api_request_failed", path=request.path)
            return json_response({"error": "internal error; the api actor's log has the details"}, 500)

    return errors


class _Handlers:
    def __init__(self, config: Config, hub: Hub) -> None:
        self.config = config
        self.hub = hub

    def _stream(self, request: web.Request) -> InstrumentStream:
        symbol = request.match_info["symbol"]
        stream = self.hub.streams.get(symbol)
        if stream is None:
            raise web.HTTPNotFound(
                text=_json({"error": f"no instrument {symbol!r}; instruments: {', '.join(self.hub.streams)}"}),
                content_type="application/json",
            )
        return stream

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def openapi(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/yaml"})

    async def health(self, request: web.Request) -> web.Response:
        only_parameters(request)
        healthy, body = self.hub.health.health(time.monotonic())
        return json_response(body, 200 if healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        only_parameters(request)
        text = self.hub.health.prometheus(time.monotonic(), self.hub.counters())
        return web.Response(text=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def instruments(self, request: web.Request) -> web.Response:
        only_parameters(request)
        return json_response({"instruments": self.hub.instruments()})

    async def book(self, request: web.Request) -> web.Response:
        stream = self._stream(request)
        only_parameters(request, "depth")
        depth = integer_parameter(request, "depth", 20, 1, self.config.shm.book_depth)
        engine = self.hub.engine
        book = engine.snapshot(stream.name)
        return json_response(book_json(stream.name, book, engine.exchanges_of(stream.name), depth))

    async def buckets(self, request: web.Request) -> web.Response:
        stream = self._stream(request)
        only_parameters(request, "fresh")
        buckets = self.hub.engine.price_buckets(stream.name, fresh=boolean_parameter(request, "fresh"))
        return json_response(_buckets_json(stream.name, buckets, self.hub.engine.exchanges_of(stream.name)))

    async def exchanges(self, request: web.Request) -> web.Response:
        only_parameters(request)
        return json_response({"exchanges": self.hub.health.exchanges()})

    async def signals(self, request: web.Request) -> web.Response:
        stream = self._stream(request)
        only_parameters(request, "count")
        count = integer_parameter(request, "count", 50, 1, self.config.signals.recent)
        try:
            signals = await asyncio.to_thread(self.hub.engine.recent_signals, stream.name, count, 2.0)
        except (ControlError, KeyError) as error:
            return json_response({"error": f"signals unavailable: {error}"}, 503)
        return json_response({"symbol": stream.name, "signals": signals})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        only_parameters(request)
        hub = self.hub
        if len(hub.dashboards) >= self.config.api.max_clients:
            return json_response({"error": f"{self.config.api.max_clients} dashboards are open already "
                                           "(api.max_clients)"}, 503)
        socket = web.WebSocketResponse(heartbeat=30.0, compress=False, max_msg_size=MAX_CLIENT_MESSAGE_BYTES)
        await socket.prepare(request)
        dashboard = Dashboard(socket, self.config.api.client_buffer_bytes)
        hub.dashboards.add(dashboard)
        writer = asyncio.create_task(self._write(dashboard))
        dashboard.send(_json({
            "type": "hello", "version": PROTOCOL_VERSION, "update_ms": self.config.api.update_ms,
            "ladder_ms": self.config.api.ladder_ms, "exchanges": list(hub.engine.exchanges),
            "instruments": [{"name": s.name, "index": s.index, "exchanges": hub.engine.exchanges_of(s.name)}
                            for s in hub.streams.values()],
        }))
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    await self._on_message(dashboard, message.data)
                elif message.type == WSMsgType.BINARY:
                    dashboard.send(_json({"type": "error", "error": "send JSON text messages (see docs/api.md)"}))
        finally:
            hub.dashboards.discard(dashboard)
            writer.cancel()
        return socket

    async def _write(self, dashboard: Dashboard) -> None:
        socket, stats = dashboard.socket, self.hub.stats
        try:
            while True:
                await dashboard.wake.wait()
                dashboard.wake.clear()
                while dashboard.pending:
                    frame = dashboard.pending.popleft()
                    dashboard.pending_bytes -= len(frame)
                    if isinstance(frame, str):
                        await socket.send_str(frame)
                    else:
                        await socket.send_bytes(frame)
                    stats["bytes_sent"] += len(frame)
                    stats["frames_sent"] += 1
        except (ConnectionError, RuntimeError):  # the page went away mid-write: the reader ends the connection
            await socket.close()

    async def _on_message(self, dashboard: Dashboard, text: str) -> None:
        """``{"op": "subscribe", "instrument": name, "ladder_depth": n}``, ``{"op": "resync"}``,
        ``{"op": "ladder", "depth": n}``; anything else is answered with an ``error`` message."""
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            dashboard.send(_json({"type": "error", "error": "not JSON: send {\"op\": ...} objects"}))
            return
        op = request.get("op") if isinstance(request, dict) else None
        if op == "subscribe":
            stream = self.hub.streams.get(request.get("instrument"))
            depth = request.get("ladder_depth", LADDER_DEPTH_DEFAULT)
            if stream is None:
                dashboard.send(_json({"type": "error", "error": f"no instrument {request.get('instrument')!r}; "
                                                                 f"instruments: {', '.join(self.hub.streams)}"}))
                return
            if not _valid_depth(depth):
                dashboard.send(_json({"type": "error", "error": f"ladder_depth must be an integer 1 to "
                                                                 f"{LADDER_DEPTH_MAX}, not {depth!r}"}))
                return
            await self._subscribe(dashboard, stream, depth)
        elif op == "resync":
            dashboard.needs_keyframe = True
        elif op == "ladder":
            depth = request.get("depth")
            if not _valid_depth(depth):
                dashboard.send(_json({"type": "error", "error": f"depth must be an integer 1 to {LADDER_DEPTH_MAX}, "
                                                                 f"not {depth!r}"}))
                return
            dashboard.ladder_depth = depth
        else:
            dashboard.send(_json({"type": "error", "error": f"unknown op {op!r}; ops: subscribe, resync, ladder"}))

    async def _subscribe(self, dashboard: Dashboard, stream: InstrumentStream, depth: int) -> None:
        """Meta, then the recent signals, then the heatmap history and the live columns after it.
        The history and the switch to the new instrument happen in one step of the event loop,
        so the next live delta follows the last history frame."""
        try:
            signals = await asyncio.to_thread(self.hub.engine.recent_signals, stream.name, 50, 1.0)
        except (ControlError, KeyError):
            signals = []
        dashboard.stream, dashboard.ladder_depth = None, depth
        dashboard.send(_json({
            "type": "meta", "instrument": stream.name, "index": stream.index,
            "exchanges": self.hub.engine.exchanges_of(stream.name), "rows": stream.rows,
            "price_step": stream.step, "update_ms": self.config.api.update_ms,
            "history_columns": stream.history_columns,
        }))
        dashboard.send(_json({"type": "signals", "instrument": stream.name, "signals": signals}))
        history = stream.history()
        for frame in history:
            dashboard.send(frame)
        dashboard.needs_keyframe = not history
        dashboard.stream = stream


def _valid_depth(depth: Any) -> bool:
    return isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth <= LADDER_DEPTH_MAX


def _buckets_json(symbol: str, buckets: PriceBuckets, listed: list[str]) -> dict[str, Any]:
    columns = [buckets.exchanges.index(name) for name in listed]

    def side(parts: dict[str, Any]) -> dict[str, Any]:
        return {
            "size": parts["size"], "notional": parts["notional"], "orders": parts["orders"],
            "exchange_size": {name: parts["exchange_size"][:, column] for name, column in zip(listed, columns)},
        }

    body = {
        "symbol": symbol,
        "generation": buckets.generation,
        "mid": buckets.mid,
        "relative": {"bps_width": buckets.bps_width, "bids": side(buckets.bid_bps), "asks": side(buckets.ask_bps)},
    }
    if buckets.abs_unit > 0:
        body["absolute"] = {"unit": buckets.abs_unit, "first_price": buckets.abs_first_price,
                            "bids": side(buckets.bid_abs), "asks": side(buckets.ask_abs)}
    return body
