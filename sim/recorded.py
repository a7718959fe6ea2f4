"""Reader and writer of recorded exchange traffic (``../shared/recorded``, format in its README).

The files are test references, read in place and never copied into the repository.
Payloads are returned exactly as recorded (text), except Huobi's binary frames, which
are recorded as Python bytes literals and returned as the bytes received (still gzip).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path

RECORDED_DIR_ENV = "COBY_RECORDED_DIR"
_REPO_ROOT = Path(__file__).resolve().parent.parent


class LineKind(Enum):
    WS_OPEN = "ws_open"  # URL <-> TS
    SENT = "sent"  # URL <- TS: PAYLOAD
    RECEIVED = "received"  # TS: PAYLOAD
    HTTP_RESPONSE = "http_response"  # URL -> TS: BODY
    CONFIGURATION = "configuration"  # configuration: JSON


@dataclass(frozen=True, slots=True)
class RecordedLine:
    kind: LineKind
    timestamp_ns: int  # 0 for the configuration line
    url: str  # "" where the line has none
    payload: str | bytes  # "" for a websocket open

    @property
    def timestamp(self) -> float:
        return self.timestamp_ns / 1e9


def recorded_dir() -> Path | None:
    """``$COBY_RECORDED_DIR``, else ``../shared/recorded`` next to the repository; None if absent."""
    configured = os.environ.get(RECORDED_DIR_ENV)
    directory = Path(configured) if configured else _REPO_ROOT.parent / "shared" / "recorded"
    return directory if directory.is_dir() else None


def read_recorded(path: str | os.PathLike[str]) -> Iterator[RecordedLine]:
    """Every record of one recorded file, in file order; empty lines are skipped."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            if line:
                try:
                    yield parse_line(line)
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: {error}") from None


def parse_line(line: str) -> RecordedLine:
    if line.startswith("configuration: "):
        return RecordedLine(LineKind.CONFIGURATION, 0, "", line[len("configuration: ") :])
    if line[0].isdigit():
        stamp, separator, payload = line.partition(": ")
        if not separator:
            raise ValueError("received line without ': '")
        return RecordedLine(LineKind.RECEIVED, _nanoseconds(stamp), "", _payload(payload))
    url, _, rest = line.partition(" ")
    arrow, _, rest = rest.partition(" ")
    if arrow == "<->":
        return RecordedLine(LineKind.WS_OPEN, _nanoseconds(rest), url, "")
    stamp, separator, payload = rest.partition(": ")
    if not separator or arrow not in ("<-", "->"):
        raise ValueError(f"unrecognised line starting {line[:60]!r}")
    kind = LineKind.SENT if arrow == "<-" else LineKind.HTTP_RESPONSE
    return RecordedLine(kind, _nanoseconds(stamp), url, payload)


def _nanoseconds(stamp: str) -> int:
    return int(Decimal(stamp).scaleb(9))


def _payload(text: str) -> str | bytes:
    if text.startswith(("b'", 'b"')):
        return ast.literal_eval(text)
    return text


def recording_prefix(exchange: str) -> str:
    """The file prefix of an exchange's recording (``binance_futures`` → ``BINANCE_FUTURES``)."""
    return exchange.upper()


def _stamp(timestamp_ns: int) -> str:
    """Seconds with 7 decimals, as the recordings write them (``1618678132.3858151``)."""
    seconds, fraction = divmod(timestamp_ns, 10**9)
    return f"{seconds}.{fraction // 100:07d}"


def _single_line(payload: str | bytes) -> str:
    if isinstance(payload, bytes):
        return repr(payload)
    # Raw newlines can only be JSON whitespace (inside strings JSON escapes them).
    return payload.replace("\r", " ").replace("\n", " ")


LIVE_GENERATION = "live"
"""The ``generation`` of a recording made by ``coby record``: today's protocol of each exchange."""


class RecordingWriter:
    """Writes live traffic in the recorded format, so ``coby verify`` can replay it.

    ``EXCHANGE.0`` gets the metadata responses and, on close, the ``configuration:`` line;
    ``EXCHANGE.http.0.0`` the REST snapshots; every websocket connection (a reconnect is a
    new connection) its own ``EXCHANGE.ws.N.0``.
    """

    def __init__(
        self, directory: str | os.PathLike[str], exchange: str, symbols: list[str], settings: dict | None = None
    ) -> None:
        self.directory = Path(directory)
        self.settings = settings or {}  # the connector's config section, so verify builds the same connector
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = recording_prefix(exchange)
        self.symbols = symbols
        self._metadata = open(self.directory / f"{self.prefix}.0", "w", encoding="utf-8")
        self._snapshots = open(self.directory / f"{self.prefix}.http.0.0", "w", encoding="utf-8")
        self._connections: dict[int, tuple[str, object]] = {}
        self._opened = 0

    def metadata(self, url: str, timestamp_ns: int, body: str | bytes) -> None:
        self._metadata.write(f"{url} -> {_stamp(timestamp_ns)}: {_single_line(_text(body))}\n")

    def snapshot(self, url: str, timestamp_ns: int, body: str | bytes) -> None:
        self._snapshots.write(f"{url} -> {_stamp(timestamp_ns)}: {_single_line(_text(body))}\n")

    def opened(self, connection: int, url: str, timestamp_ns: int) -> None:
        self.closed(connection)
        self._opened += 1
        file = open(self.directory / f"{self.prefix}.ws.{self._opened}.0", "w", encoding="utf-8")
        file.write(f"{url} <-> {_stamp(timestamp_ns)}\n")
        self._connections[connection] = (url, file)

    def sent(self, connection: int, timestamp_ns: int, payload: str | bytes) -> None:
        url, file = self._connections[connection]
        file.write(f"{url} <- {_stamp(timestamp_ns)}: {_single_line(payload)}\n")

    def received(self, connection: int, timestamp_ns: int, payload: str | bytes) -> None:
        self._connections[connection][1].write(f"{_stamp(timestamp_ns)}: {_single_line(payload)}\n")

    def closed(self, connection: int) -> None:
        if connection in self._connections:
            self._connections.pop(connection)[1].close()

    def close(self) -> None:
        for connection in list(self._connections):
            self.closed(connection)
        configured = [symbol.replace("/", "-").replace(":", "-") for symbol in self.symbols]
        # "generation": the recording speaks the connector's live protocol, not a recorded one
        description = {
            "l2_book": configured, "trades": configured, "generation": LIVE_GENERATION, "settings": self.settings
        }
        self._metadata.write(f"configuration: {json.dumps(description)}\n")
        self._metadata.close()
        self._snapshots.close()


def _text(body: str | bytes) -> str:
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body
