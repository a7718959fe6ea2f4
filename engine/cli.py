"""The ``coby`` command line.

    coby run                  the engine against the live exchanges in config.yaml
    coby demo [--seconds N]   the whole engine against the local simulator, offline
    coby status [--json]      each actor's pid, state, restarts, heartbeat, CPU, RSS; ring fill (rich tables)
    coby book SYMBOL          the consolidated book, live, with per-exchange columns (--json, --once)
    coby dashboard [--open]   the dashboard's URL (and open it in a browser)
    coby record --out DIR     the engine, writing every connector's traffic in the recorded format
    coby verify PATH...       recorded exchange traffic through the real connector code path
    coby restart|stop|start ACTOR, coby shutdown, coby sweep, coby actor NAME

Every failure a user can cause (bad config, busy port, instance already running, no
engine to talk to) ends with one clear line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from engine.config import Config, ConfigError, is_loopback_host, load_config
from engine.control import ControlError, request
from engine.supervisor import StartupError, Supervisor, default_actor_specs, free_ports, running_directory
from shm.records import Status
from shm.registry import sweep


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(path, overrides=overrides)


def command_run(arguments: argparse.Namespace) -> int:
    overrides = {"engine": {"instance": arguments.instance}} if arguments.instance else None
    config = _load(arguments.config, overrides)
    supervisor = Supervisor(config, extra_directory={"dashboard": dashboard_url(config)})
    supervisor.start()
    return supervisor.run()


def demo_config(path: str | None, instance: str) -> Config:
    """The user's config with every exchange pointed at the local simulator, on free ports.

    Exchanges whose URLs already name a loopback port keep them (a fixed-port simulator).
    A URL's path stays: it can select the protocol generation (Kraken's ``/v2``).
    """
    base = _load(path)
    host = base.simulator.host
    simulated = [
        name
        for name in base.exchange_ids()
        if not all(
            is_loopback_host(urlsplit(url).hostname or "")
            for url in (base.exchanges[name].ws_url, base.exchanges[name].rest_url)
        )
    ]
    ports = iter(free_ports(2 * len(simulated), host))
    exchanges = {}
    for name in simulated:
        ws_path = urlsplit(base.exchanges[name].ws_url).path.rstrip("/")
        exchanges[name] = {
            "ws_url": f"ws://{host}:{next(ports)}{ws_path}",
            "rest_url": f"http://{host}:{next(ports)}",
        }
    any_port = "tcp://127.0.0.1:0"
    return _load(
        path,
        {
            "engine": {"instance": instance},
            "endpoints": {"control": any_port, "bus_publish": any_port, "bus_subscribe": any_port},
            "exchanges": exchanges,
            "api": {"port": _free_or_any(base.api.host, base.api.port)},
        },
    )


def _free_or_any(host: str, port: int) -> int:
    """``port`` if nothing listens on it now, else a free one: a second demo gets a dashboard too."""
    if port:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
                return port
            except OSError:
                pass
    return free_ports(1, host)[0]


class _DemoPrinter:
    """Prints each instrument's consolidated top of book once a second while the demo runs,
    and its ladder with the per-exchange columns every ``LADDER_EVERY`` seconds."""

    LADDER_EVERY = 5

    def __init__(self, supervisor: Supervisor) -> None:
        from engine.client import attach

        self.engine = attach(supervisor.instance)
        self.supervisor = supervisor
        self.next_print = time.monotonic() + 1.0
        self.prints = 0
        self.ever_in_sync: set[tuple[str, str]] = set()
        self.last_status = supervisor.status()

    def __call__(self) -> None:
        from engine.render import ladder_lines, summary_line

        now = time.monotonic()
        if now < self.next_print:
            return
        self.next_print = now + 1.0
        self.prints += 1
        self.last_status = self.supervisor.status()
        for symbol in self.engine.instruments:
            book = self.engine.book(symbol).snapshot()
            listed = self.engine.exchanges_of(symbol)
            for name in listed:
                if book.exchange(name).status == Status.IN_SYNC:
                    self.ever_in_sync.add((name, symbol))
            print(summary_line(symbol, book, listed), flush=True)
            if self.prints % self.LADDER_EVERY == 0 and book.best_bid is not None:
                print("\n".join(ladder_lines(book, listed)), flush=True)

    def summary(self, seconds: float) -> tuple[str, bool]:
        """The closing line, from the last state sampled while the engine ran."""
        status = self.last_status
        records = sum(stats["written_records"] for stats in status["rings"].values())
        overflows = sum(stats["dropped_batches"] for stats in status["rings"].values())
        restarts = sum(actor["restarts"] for actor in status["actors"])
        exchanges = self.supervisor.config.exchanges
        wanted = {(name, symbol) for name in self.engine.exchanges for symbol in exchanges[name].symbols}
        synced = len(wanted & self.ever_in_sync)
        ok = synced == len(wanted)
        line = (
            f"demo {'ok' if ok else 'FAILED'}: {seconds:.0f}s, {len(self.engine.symbols)} symbols, "
            f"{synced}/{len(wanted)} exchange books synced, {records} records, "
            f"{overflows} ring overflows, {restarts} restarts"
        )
        return line, ok

    def close(self) -> None:
        self.engine.close()


def command_demo(arguments: argparse.Namespace) -> int:
    config = demo_config(arguments.config, arguments.instance)
    simulated = {
        name: {"ws_url": config.exchanges[name].ws_url, "rest_url": config.exchanges[name].rest_url}
        for name in config.exchange_ids()
    }
    dashboard = dashboard_url(config)
    supervisor = Supervisor(
        config, default_actor_specs(config, with_simulator=True),
        extra_directory={"simulator": simulated, "dashboard": dashboard},
    )
    supervisor.start()
    if dashboard:
        print(f"dashboard: {dashboard}", flush=True)
    printer = _DemoPrinter(supervisor)
    started = time.monotonic()
    code = supervisor.run(duration_s=arguments.seconds, on_tick=printer)
    line, ok = printer.summary(time.monotonic() - started)
    printer.close()
    print(line, flush=True)
    return code or (0 if ok else 1)


def _running(arguments: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control endpoint and the directory of the instance the arguments name."""
    config = _load(arguments.config)
    instance = arguments.instance or config.engine.instance
    directory = running_directory(instance)
    if directory is None:
        raise ControlError(f"no coby instance {instance!r} is running on this host (start one with 'coby run')")
    return directory["endpoints"]["control"], directory


def _control_endpoint(arguments: argparse.Namespace) -> str:
    return _running(arguments)[0]


def dashboard_url(config: Config) -> str | None:
    """Where the api actor serves the dashboard, as configured (None: api off, or port 0)."""
    api = config.api
    if not api.enabled or not api.port:
        return None
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::") else api.host
    return f"http://{f'[{host}]' if ':' in host else host}:{api.port}/"


def command_status(arguments: argparse.Namespace) -> int:
    from engine.render import console, status_view

    endpoint, directory = _running(arguments)
    reply = request(endpoint, "status")
    if arguments.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0 if reply.get("ok") else 1
    console().print(status_view(reply, directory.get("dashboard")))
    return 0


def command_book(arguments: argparse.Namespace) -> int:
    """The consolidated book of one instrument of a running engine, redrawn until Ctrl-C."""
    from rich.live import Live

    from engine.client import attach
    from engine.render import book_json, book_view, console

    config = _load(arguments.config)
    instance = arguments.instance or config.engine.instance
    if running_directory(instance) is None:
        raise ControlError(f"no coby instance {instance!r} is running on this host (start one with 'coby run')")
    engine = attach(instance)
    try:
        if arguments.symbol not in engine.instruments:
            raise ControlError(f"no instrument {arguments.symbol!r}; instruments: {', '.join(engine.instruments)}")
        listed = engine.exchanges_of(arguments.symbol)
        if arguments.json:
            book = engine.snapshot(arguments.symbol)
            print(json.dumps(book_json(arguments.symbol, book, listed, arguments.depth)), flush=True)
            return 0
        out = console()

        def view():
            return book_view(arguments.symbol, engine.snapshot(arguments.symbol), listed, arguments.depth, out.width)

        if arguments.once or not out.is_terminal:
            out.print(view())
            return 0
        with Live(view(), console=out, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(arguments.interval)
                live.update(view(), refresh=True)
    finally:
        engine.close()


def command_dashboard(arguments: argparse.Namespace) -> int:
    """The running instance's dashboard URL; --open starts a browser on it."""
    import webbrowser

    _, directory = _running(arguments)
    url = directory.get("dashboard")
    if not url:
        raise ControlError("this instance serves no dashboard at a known port (api.enabled false, or api.port 0: "
                           "the api actor's log line api_listening has the URL)")
    print(url + ("  (add ?token=<api.token>)" if _load(arguments.config).api.token else ""))
    if arguments.open:
        webbrowser.open(url)
    return 0


def command_control(arguments: argparse.Namespace) -> int:
    extra = {"actor": arguments.actor} if getattr(arguments, "actor", None) else {}
    reply = request(_control_endpoint(arguments), arguments.command, **extra)
    if not reply.get("ok"):
        print(f"coby: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0


def command_sweep(arguments: argparse.Namespace) -> int:
    removed = sweep()
    print(f"removed {len(removed)} orphaned segment(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0


def command_record(arguments: argparse.Namespace) -> int:
    """Run the engine and write every connector's traffic in the recorded format."""
    out = Path(arguments.out).resolve()
    if arguments.simulated:
        config = demo_config(arguments.config, arguments.instance or "record")
    else:
        overrides = {"engine": {"instance": arguments.instance}} if arguments.instance else None
        config = _load(arguments.config, overrides)
    specs = [
        replace(spec, arguments={**spec.arguments, "record_dir": str(out)}) if spec.kind == "connector" else spec
        for spec in default_actor_specs(config, with_simulator=arguments.simulated)
    ]
    supervisor = Supervisor(config, specs)
    supervisor.start()
    clock = _RecordingClock(supervisor, config.exchange_ids(), arguments.seconds, arguments.settle_seconds)
    code = supervisor.run(on_tick=clock.tick)
    print(f"recorded {len(config.exchange_ids())} exchange(s) into {out}; replay with: coby verify {out}", flush=True)
    return code


class _RecordingClock:
    """Counts ``--seconds`` from the moment every configured book has its first snapshot, so a
    slow start-up (eleven venues spawning on two cores) does not shorten what is recorded;
    waits at most ``settle_s`` for that, then counts anyway and says which books never synced."""

    def __init__(self, supervisor: Supervisor, exchanges: list[str], seconds: float, settle_s: float) -> None:
        self.supervisor, self.exchanges, self.seconds, self.settle_s = supervisor, exchanges, seconds, settle_s
        self.started = time.monotonic()
        self.recording_since: float | None = None

    def unsynced(self) -> list[str]:
        counters = self.supervisor.exchange_counters
        missing = [exchange for exchange in self.exchanges if exchange not in counters]
        return missing + [
            f"{exchange} {symbol}"
            for exchange in self.exchanges if exchange in counters
            for symbol, symbol_counters in counters[exchange]["symbols"].items()
            if symbol_counters["snapshots"] < 1
        ]

    def tick(self) -> None:
        now = time.monotonic()
        if self.recording_since is None:
            waiting = self.unsynced()
            if waiting and now - self.started < self.settle_s:
                return
            if waiting:
                print(f"coby: still without a first snapshot after {self.settle_s:.0f}s: {', '.join(waiting)}",
                      file=sys.stderr, flush=True)
            self.recording_since = now
        if now - self.recording_since >= self.seconds:
            self.supervisor.request_stop()


def command_verify(arguments: argparse.Namespace) -> int:
    from engine import verify

    return verify.main(arguments.paths)


def command_actor(arguments: argparse.Namespace) -> int:
    """Run one actor in the foreground against a running instance, for debugging."""
    from engine.actor import ActorSpec, actor_main

    config = _load(arguments.config)
    instance = arguments.instance or config.engine.instance
    directory = running_directory(instance)
    if directory is None:
        raise ControlError(f"no coby instance {instance!r} is running; start it first with 'coby run'")
    specs = {spec.name: spec for spec in default_actor_specs(config, with_simulator="simulator" in directory)}
    if arguments.name not in specs:
        raise ControlError(f"no actor {arguments.name!r}; actors: {sorted(specs)}")
    status = request(directory["endpoints"]["control"], "status")
    state = next(a["state"] for a in status["actors"] if a["name"] == arguments.name)
    if state != "stopped":
        raise ControlError(
            f"actor {arguments.name!r} is {state} under the supervisor; run 'coby stop {arguments.name}' first"
        )
    spec = specs[arguments.name]
    actor_main(ActorSpec(spec.name, spec.kind, spec.target, -1, spec.arguments), config, directory, 0)
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    """A time range of the stored tables as CSV files (conventions: engine.storage.export)."""
    from engine.storage import configured_backend
    from engine.storage import DatabaseUnavailable, SchemaVersionError
    from engine.storage.export import csv_path, export, parse_time

    settings = _load(arguments.config).storage
    out = Path(arguments.out)
    try:
        start_ns, end_ns = parse_time(arguments.start), parse_time(arguments.end)
        if settings.backend == "sqlite" and not Path(settings.sqlite_path).is_file():
            raise ValueError(f"no database at {settings.sqlite_path} (storage.sqlite_path): nothing was stored there")
        backend = configured_backend(settings)
        with backend:
            written = export(backend, out, start_ns, end_ns, _names(arguments.tables),
                             _names(arguments.exchanges), _names(arguments.symbols))
    except (ValueError, OSError, DatabaseUnavailable, SchemaVersionError) as error:
        raise ControlError(f"export: {error}") from error
    for table, rows in written.items():
        print(f"{table}: {rows} rows -> {csv_path(out, table)}")
    return 0


def command_replay(arguments: argparse.Namespace) -> int:
    """A replay session in the foreground: stored traffic through the engine, with a progress bar."""
    from actors.replay import replay_session
    from engine.bus import Subscriber
    from engine.storage.export import parse_time

    try:
        start_ns, end_ns = parse_time(arguments.start), parse_time(arguments.end)
    except ValueError as error:
        raise ControlError(f"replay: {error}") from error
    if start_ns >= end_ns or arguments.speed < 0:
        raise ControlError("replay: --to must be after --from, and --speed 0 (as fast as possible) or positive")
    any_port = "tcp://127.0.0.1:0"
    base = _load(arguments.config)
    config = _load(arguments.config, {"engine": {"instance": arguments.instance},
                                      "endpoints": {"control": any_port, "bus_publish": any_port,
                                                    "bus_subscribe": any_port},
                                      "api": {"port": _free_or_any(base.api.host, base.api.port)}})
    try:
        session, specs = replay_session(config, start_ns, end_ns, arguments.speed,
                                        _names(arguments.exchanges), _names(arguments.symbols))
    except ValueError as error:
        raise ControlError(str(error)) from error
    dashboard = dashboard_url(session)
    supervisor = Supervisor(session, specs, extra_directory={"mode": "replay", "dashboard": dashboard})
    supervisor.start()
    if dashboard:
        print(f"dashboard: {dashboard}", flush=True)
    progress = Subscriber(zmq.Context.instance(), supervisor.directory["endpoints"]["bus_subscribe"],
                          ["replay.progress"])
    finished = []

    def show() -> None:
        while (message := progress.receive(0)) is not None:
            state = message[1]
            bar = "#" * round(state["fraction"] * 40)
            when = datetime.datetime.fromtimestamp(state["position_ns"] / 1e9, datetime.timezone.utc)
            flags = " paused" if state["paused"] else ""
            print(f"\r[{bar:<40}] {state['fraction']:6.1%} {when:%Y-%m-%d %H:%M:%S} UTC  "
                  f"{state['records']:,} records  {state['speed'] or 'max'}x{flags}   ", end="", flush=True)
            if state["done"] and not arguments.hold:
                finished.append(state)
                supervisor.request_stop()

    code = supervisor.run(on_tick=show)
    progress.close()
    print(flush=True)
    if finished:
        print(f"replay done: {finished[-1]['records']:,} records", flush=True)
    return code


def _names(listed: str | None) -> list[str] | None:
    """A comma-separated option as names; None when it was not given."""
    return None if listed is None else [name.strip() for name in listed.split(",") if name.strip()]


def command_replay_control(arguments: argparse.Namespace) -> int:
    """Steer a running replay session: status, pause, resume, speed X, seek TIME."""
    from engine.storage.export import parse_time

    directory = running_directory(arguments.instance)
    if directory is None or "replay" not in directory.get("mode", ""):
        raise ControlError(f"no replay session {arguments.instance!r} is running; start one with 'coby replay'")
    extra: dict[str, Any] = {}
    try:
        if arguments.command_name == "speed":
            extra["value"] = float(arguments.value)
        elif arguments.command_name == "seek":
            extra["to_ns"] = parse_time(arguments.value)
    except (TypeError, ValueError) as error:
        raise ControlError(f"replay-control {arguments.command_name}: give a value ({error})") from error
    reply = request(directory["endpoints"]["replay"], arguments.command_name, **extra)
    print(json.dumps(reply, sort_keys=True))
    return 0 if reply.get("ok") else 1


def build_parser() -> argparse.ArgumentParser:
    config_help = "config file (default: $COBY_CONFIG, else ./config.yaml, else defaults)"
    parser = argparse.ArgumentParser(prog="coby", description="Multi-exchange consolidated order book engine.")
    parser.add_argument("--config", help=config_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Any, text: str, instance_default: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, parents=[common])
        sub.add_argument(
            "--instance", default=instance_default, help="engine instance name (default: engine.instance)"
        )
        sub.set_defaults(handler=handler)
        return sub

    command("run", command_run, "run the engine against the exchanges in the config")
    demo = command("demo", command_demo, "run the whole engine against the local simulator (offline)", "demo")
    demo.add_argument("--seconds", type=float, default=20.0, help="stop after this long (default 20)")
    status = command("status", command_status, "actors, heartbeats, CPU/RSS, ring fill of a running engine")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    book = command("book", command_book, "the consolidated book of one instrument, live, with per-exchange columns")
    book.add_argument("symbol", help="an instrument: a configured symbol (BTC/USDT) or a synthetic one")
    book.add_argument("--depth", type=int, default=10, help="levels per side (default 10)")
    book.add_argument("--interval", type=float, default=0.5, help="seconds between redraws (default 0.5)")
    book.add_argument("--once", action="store_true", help="print once and exit")
    book.add_argument("--json", action="store_true", help="one machine-readable snapshot, then exit")
    dashboard = command("dashboard", command_dashboard, "the URL of a running engine's heatmap dashboard")
    dashboard.add_argument("--open", action="store_true", help="open it in the default browser")
    for name, text in (
        ("restart", "restart one actor"),
        ("stop", "stop one actor and hold it stopped"),
        ("start", "release a held actor"),
    ):
        command(name, command_control, text).add_argument("actor")
    command("shutdown", command_control, "stop a running engine gracefully")
    command("sweep", command_sweep, "remove shared-memory segments whose supervisor is dead")
    command("actor", command_actor, "run one actor in the foreground against a running engine").add_argument("name")
    record = command("record", command_record, "run the engine and record all exchange traffic (replay: coby verify)")
    record.add_argument("--out", required=True, help="directory for the recording files")
    record.add_argument("--seconds", type=float, default=60.0,
                        help="record this long once every book has its first snapshot (default 60)")
    record.add_argument("--settle-seconds", type=float, default=60.0,
                        help="wait at most this long for every book's first snapshot (default 60)")
    record.add_argument("--simulated", action="store_true", help="record the local simulator instead of the exchanges")
    verify = command("verify", command_verify, "replay recorded exchange traffic through the connectors (offline)")
    verify.add_argument("paths", nargs="+", help="recorded files, or directories of them")
    export = command("export", command_export, "write a time range of the stored tables to CSV files, one per table")
    export.add_argument("--from", dest="start", required=True, metavar="ISO_OR_NS",
                        help="start, included: ISO-8601 (UTC if no zone) or ns")
    export.add_argument("--to", dest="end", required=True, metavar="ISO_OR_NS",
                        help="end, excluded: ISO-8601 (UTC if no zone) or ns")
    export.add_argument("--out", required=True, metavar="DIR",
                        help="directory for the <table>.csv files (created when missing)")
    export.add_argument("--tables", help="comma-separated tables (default: every table)")
    export.add_argument("--exchanges", help="comma-separated exchanges; * for the data consolidated across them")
    export.add_argument("--symbols", help="comma-separated symbols")
    replay = command("replay", command_replay, "play stored traffic back through the engine (a replay session)",
                     "replay")
    replay.add_argument("--from", dest="start", required=True, metavar="ISO_OR_NS", help="start (ISO-8601 or ns)")
    replay.add_argument("--to", dest="end", required=True, metavar="ISO_OR_NS", help="end, excluded")
    replay.add_argument("--speed", type=float, default=1.0, help="× real time; 0 = as fast as possible (default 1)")
    replay.add_argument("--hold", action="store_true", help="keep the engine up when the range is done")
    replay.add_argument("--exchanges", help="comma-separated exchanges to replay (default: all of the config's)")
    replay.add_argument("--symbols", help="comma-separated symbols to replay (default: all of the config's)")
    steer = command("replay-control", command_replay_control, "pause, resume, speed or seek a running replay",
                    "replay")
    steer.add_argument("command_name", choices=("status", "pause", "resume", "speed", "seek"), metavar="COMMAND",
                       help="status | pause | resume | speed X | seek TIME")
    steer.add_argument("value", nargs="?", help="the speed (× real time, 0 = max) or the time to seek to")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        return arguments.handler(arguments)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except (StartupError, ControlError) as error:
        print(f"coby: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from engine.bus import PortInUse

        if isinstance(error, PortInUse):
            print(f"coby: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
