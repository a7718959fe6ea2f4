"""A consolidated book as text (``coby demo``), for a person (``coby book``, with rich) and as
JSON (``coby book --json``); the engine's status for a person (``coby status``).

The ladder shows asks above bids, best prices in the middle, one size column per exchange
that feeds the instrument, so it is visible at a glance which venue holds the liquidity.

Rich output is rendered at a fixed width of ``PIPE_WIDTH`` when it does not go to a terminal,
so a pipe or a file gets whole rows (rich would otherwise wrap them at 80 columns).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from engine.client import Book
from shm.records import Status

PIPE_WIDTH = 200
STATE_STYLES = {"running": "green", "starting": "yellow", "backoff": "bold red", "failed": "bold red",
                "stopped": "dim", "stopping": "yellow", "dead": "bold red"}
MARKET_STYLES = {"in_sync": "green", "syncing": "yellow", "resyncing": "yellow", "connecting": "yellow",
                 "stale": "red", "disconnected": "red", "error": "bold red", "unknown": "dim"}

_STATUS_WORDS = {status: status.name.lower() for status in Status}


def _number(value: float, width: int, decimals: int) -> str:
    return f"{value:>{width}.{decimals}f}" if value else " " * (width - 1) + "-"


def price_decimals(prices: list[float]) -> int:
    """Enough decimals to tell the shown prices apart (2 to 8)."""
    for decimals in range(2, 9):
        if all(math.isclose(round(p, decimals), p, rel_tol=0, abs_tol=1e-12) for p in prices):
            return decimals
    return 8


def venue_states(book: Book, listed: list[str]) -> str:
    parts = []
    for name in listed:
        state = book.exchange(name)
        included = bool(book.slot["exchange_included"][book.exchanges[name]])
        word = _STATUS_WORDS[state.status] if state.status != Status.IN_SYNC or included else "in_sync(excluded)"
        parts.append(f"{name}:{word}")
    return " ".join(parts)


def summary_line(symbol: str, book: Book, listed: list[str]) -> str:
    """One line: the consolidated touch, spread, metrics and each venue's state."""
    return f"{touch_summary(symbol, book)}  {venue_states(book, listed)}"


def touch_summary(symbol: str, book: Book) -> str:
    """The consolidated touch, spread, vw-mid, imbalance and level counts of a book."""
    if book.best_bid is None or book.best_ask is None:
        return f"{symbol:<14} (no consolidated book yet)"
    analytics = book.metrics
    mid = (book.best_bid + book.best_ask) / 2
    spread_bps = (book.best_ask - book.best_bid) / mid * 1e4
    decimals = price_decimals([book.best_bid, book.best_ask])
    imbalance = float(analytics["imbalance"][0]) if len(analytics["imbalance"]) else 0.0
    return (
        f"{symbol:<14} bid {book.best_bid:>12.{decimals}f} x {book.bid_size[0]:<10.5f} "
        f"ask {book.best_ask:>12.{decimals}f} x {book.ask_size[0]:<10.5f} spread {spread_bps:7.3f} bp  "
        f"vw-mid {float(analytics['vw_mid']):.{decimals + 1}f}  imb {imbalance:+.2f}  "
        f"levels {len(book.bid_price)}/{len(book.ask_price)}"
    )


def ladder_lines(book: Book, listed: list[str], depth: int = 5) -> list[str]:
    """The top ``depth`` levels each side with the per-exchange sizes beside the total."""
    asks = list(range(min(depth, len(book.ask_price))))[::-1]
    bids = list(range(min(depth, len(book.bid_price))))
    shown = [float(book.ask_price[i]) for i in asks] + [float(book.bid_price[i]) for i in bids]
    decimals = price_decimals(shown) if shown else 2
    columns = [book.exchanges[name] for name in listed]
    width = max([10] + [len(name) + 1 for name in listed])
    lines = [f"{'':4}{'price':>14}{'total':>12}" + "".join(f"{name:>{width}}" for name in listed)]
    for side, rows, prices, sizes, by_exchange in (
        ("ask", asks, book.ask_price, book.ask_size, book.ask_exchange_size),
        ("bid", bids, book.bid_price, book.bid_size, book.bid_exchange_size),
    ):
        for row in rows:
            lines.append(
                f"{side:<4}{float(prices[row]):>14.{decimals}f}{float(sizes[row]):>12.5f}"
                + "".join(_number(float(by_exchange[row, column]), width, 5) for column in columns)
            )
    return lines


def book_json(symbol: str, book: Book, listed: list[str], depth: int) -> dict[str, Any]:
    analytics = book.metrics
    names = {index: name for name, index in book.exchanges.items()}

    def side(prices, sizes, orders, by_exchange) -> list[dict[str, Any]]:
        return [
            {
                "price": float(prices[row]),
                "size": float(sizes[row]),
                "orders": int(orders[row]),
                "exchanges": {name: float(by_exchange[row, book.exchanges[name]]) for name in listed
                              if by_exchange[row, book.exchanges[name]]},
            }
            for row in range(min(depth, len(prices)))
        ]

    return {
        "symbol": symbol,
        "generation": book.generation,
        "publish_ts": book.publish_ts,
        "bids": side(book.bid_price, book.bid_size, book.bid_orders, book.bid_exchange_size),
        "asks": side(book.ask_price, book.ask_size, book.ask_orders, book.ask_exchange_size),
        "metrics": {
            "generation": int(analytics["generation"]),
            "mid": float(analytics["mid"]),
            "vw_mid": float(analytics["vw_mid"]),
            "spread_bps": float(analytics["spread_bps"]),
            "imbalance": dict(zip(map(str, analytics["imbalance_bps"].tolist()), analytics["imbalance"].tolist())),
            "cross_spread_bps": float(analytics["cross_spread_bps"]),
            "cross_bid_exchange": names.get(int(analytics["cross_bid_exchange"])),
            "cross_ask_exchange": names.get(int(analytics["cross_ask_exchange"])),
        },
        "exchanges": {
            name: {
                "status": _STATUS_WORDS[book.exchange(name).status],
                "included": bool(book.slot["exchange_included"][book.exchanges[name]]),
                "since_ns": book.exchange(name).since_ns,
                "best_bid": book.exchange(name).best_bid,
                "best_ask": book.exchange(name).best_ask,
            }
            for name in listed
        },
    }


# ---- rich: coby book, coby status -----------------------------------------------------------


def console() -> Console:
    tty = sys.stdout.isatty()
    return Console(width=None if tty else PIPE_WIDTH, highlight=False, soft_wrap=not tty)


def _venue_text(book: Book, listed: list[str]) -> Text:
    text = Text()
    for name in listed:
        state = book.exchange(name)
        included = bool(book.slot["exchange_included"][book.exchanges[name]])
        word = _STATUS_WORDS[state.status]
        style = MARKET_STYLES.get(word, "")
        if state.status == Status.IN_SYNC and not included:
            word, style = "in_sync(excluded)", "yellow"
        text.append(f" {name}:", style="dim").append(word, style=style)
    return text


SHORT_NAMES = {"binance": "BIN", "binance_futures": "BINF", "coinbase": "CB", "kraken": "KRK", "htx": "HTX",
               "bitfinex": "BFX", "okx": "OKX", "bybit": "BYB", "kucoin": "KUC", "bitstamp": "BST", "gateio": "GATE"}


def book_view(symbol: str, book: Book, listed: list[str], depth: int, width: int = PIPE_WIDTH) -> Group:
    """The summary line, then the ladder: asks (red) above bids (green), the size of every
    exchange beside the total, each level's largest contributor in bold. In a terminal too
    narrow for every exchange's full name and size, the exchanges get short names and sizes
    fit in five characters: prices and totals are never cut."""
    head = Text(touch_summary(symbol, book), style="bold")
    head.append(" ").append_text(_venue_text(book, listed))
    asks = list(range(min(depth, len(book.ask_price))))[::-1]
    bids = list(range(min(depth, len(book.bid_price))))
    shown = [float(book.ask_price[i]) for i in asks] + [float(book.bid_price[i]) for i in bids]
    decimals = price_decimals(shown) if shown else 2
    columns = [book.exchanges[name] for name in listed]
    compact = width < 3 + 16 + 12 + sum(max(len(name), 9) + 2 for name in listed)
    size_text = _five_characters if compact else (lambda size: f"{size:.5f}")
    table = Table(box=None, pad_edge=False, header_style="bold dim", show_edge=False)
    table.add_column("", style="dim", no_wrap=True)
    table.add_column("price", justify="right", no_wrap=True, min_width=len(f"{max(shown, default=0):.{decimals}f}"))
    table.add_column("total", justify="right", style="bold", no_wrap=True, min_width=7 if compact else 9)
    for name in listed:
        table.add_column(SHORT_NAMES.get(name, name[:4].upper()) if compact else name, justify="right")
    for side, rows, prices, sizes, by_exchange, style in (
        ("ask", asks, book.ask_price, book.ask_size, book.ask_exchange_size, "red"),
        ("bid", bids, book.bid_price, book.bid_size, book.bid_exchange_size, "green"),
    ):
        for row in rows:
            row_sizes = [float(by_exchange[row, column]) for column in columns]
            largest = max(row_sizes, default=0.0)
            table.add_row(
                side, Text(f"{float(prices[row]):.{decimals}f}", style=style), size_text(float(sizes[row])),
                *(Text(size_text(size), style="bold" if size == largest else "") if size else Text("-", style="dim")
                  for size in row_sizes),
                end_section=side == "ask" and row == rows[-1],
            )
    return Group(head, table)


def _five_characters(size: float) -> str:
    """A size in at most five characters (0.093, 12.35, 1235, 1.2e6), for narrow terminals."""
    if size < 1:
        return f"{size:.3f}" if size >= 0.001 else f"{size:.0e}"
    text = f"{size:.4g}"
    return text if len(text) <= 5 else f"{size:.1e}".replace("e+0", "e").replace("e+", "e")


def status_view(reply: dict[str, Any], dashboard: str | None = None) -> Group:
    """``coby status``: actors, rings, and each exchange's counters per symbol."""
    head = Text.assemble(("instance ", "dim"), (str(reply["instance"]), "bold"), ("  supervisor pid ", "dim"),
                         str(reply["pid"]), ("  up ", "dim"), f"{reply['uptime_s']:.0f}s")
    if dashboard:
        head.append("  dashboard ", style="dim").append(dashboard, style="cyan underline")
    actors = _table(("actor", "left"), "pid", ("state", "left"), "restarts", "beat age", "cpu %", "rss MiB")
    for actor in reply["actors"]:
        age = "-" if actor["heartbeat_age_s"] is None else f"{actor['heartbeat_age_s']:.2f}s"
        actors.add_row(actor["name"], str(actor["pid"] or "-"),
                       Text(actor["state"], style=STATE_STYLES.get(actor["state"], "")), str(actor["restarts"]), age,
                       f"{actor['cpu_percent']:.1f}", f"{actor['rss_bytes'] / 2**20:.1f}")
    rings = _table(("ring", "left"), "fill", "capacity", "fill %", "overflows", "records")
    feed = {"storage feed": reply["storage_feed"]} if "storage_feed" in reply else {}
    for name, ring in {**reply["rings"], **feed}.items():
        rings.add_row(name, str(ring["fill"]), str(ring["capacity"]),
                      Text(f"{ring['fill_ratio'] * 100:.2f}", style="red" if ring["fill_ratio"] > 0.5 else ""),
                      Text(str(ring["dropped_batches"]), style="bold red" if ring["dropped_batches"] else ""),
                      str(ring["written_records"]))
    counters = _table(("exchange symbol", "left"), "frames", "applied", "levels", "snaps", "resyncs", "gaps",
                      "errors", "lag ms")
    for exchange, report in reply.get("exchanges", {}).items():
        for symbol, values in report["symbols"].items():
            counters.add_row(
                f"{exchange} {symbol}", str(values["frames"]), str(values["frames_applied"]),
                str(values["levels_applied"]), str(values["snapshots"]),
                Text(str(values["resyncs"]), style="yellow" if values["resyncs"] else ""),
                Text(str(values["gaps"]), style="yellow" if values["gaps"] else ""),
                Text(str(values["parse_errors"]), style="red" if values["parse_errors"] else ""),
                f"{values['receive_lag_ns'] / 1e6:.1f}",
            )
    return Group(head, actors, rings, counters)


def _table(*columns: str | tuple[str, str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for column in columns:
        name, justify = column if isinstance(column, tuple) else (column, "right")
        table.add_column(name, justify=justify)
    return table
