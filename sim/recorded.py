"""Reader of the recorded real exchange traffic (``../shared/recorded``, format in its README).

The files are test references, read in place and never copied into the repository.
Payloads are returned exactly as recorded (text), except Huobi's binary frames, which
are recorded as Python bytes literals and returned as the bytes received (still gzip).
"""

from __future__ import annotations

import ast
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
