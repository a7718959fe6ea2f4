"""The ``coby`` command line.

    coby run                  the engine against the live exchanges in config.yaml
    coby demo [--seconds N]   the whole engine against the local simulator, offline
    coby status [--json]      each actor's pid, state, restarts, heartbeat, CPU, RSS; ring fill
    coby record --out DIR     the engine, writing every connector's traffic in the recorded format
    coby verify PATH...       recorded exchange traffic through the real connector code path
    coby restart|stop|start ACTOR, coby shutdown, coby sweep, coby actor NAME

Every failure a user can cause (bad config, busy port, instance already running, no
engine to talk to) ends with one clear line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.config import Config, ConfigError, is_loopback_host, load_config
from engine.control import ControlError, request
from engine.supervisor import StartupError, Supervisor, default_actor_specs, free_ports, running_directory
from shm.records import Status
from shm.registry import sweep


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(path, overrides=overrides)


def command_run(arguments: argparse.Namespace) -> int:
    overrides = {"engine": {"instance": arguments.instance}} if arguments.instance else None
    supervisor = Supervisor(_load(arguments.config, overrides))
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
        },
    )


class _DemoPrinter:
    """Prints the consolidated top of book once a second while the demo runs."""

    def __init__(self, supervisor: Supervisor) -> None:
        from engine.client import attach

        self.engine = attach(supervisor.instance)
        self.supervisor = supervisor
        self.next_print = time.monotonic() + 1.0
        self.ever_in_sync: set[tuple[str, str]] = set()
        self.last_status = supervisor.status()

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self.next_print:
            return
        self.next_print = now + 1.0
        self.last_status = self.supervisor.status()
        for symbol in self.engine.symbols:
            book = self.engine.book(symbol).snapshot()
            states = book.exchange_states()
            for state in states:
                if state.status == Status.IN_SYNC:
                    self.ever_in_sync.add((state.name, symbol))
            listed = [s for s in states if symbol in self.supervisor.config.exchanges[s.name].symbols]
            venues = " ".join(f"{s.name}:{s.status.name.lower()}" for s in listed)
            if book.best_bid is None or book.best_ask is None:
                print(f"{symbol:<12} (no consolidated book yet)  {venues}", flush=True)
                continue
            mid = (book.best_bid + book.best_ask) / 2
            spread_bps = (book.best_ask - book.best_bid) / mid * 1e4
            print(
                f"{symbol:<12} bid {book.best_bid:>12.2f} x {book.bid_size[0]:<10.5f} "
                f"ask {book.best_ask:>12.2f} x {book.ask_size[0]:<10.5f} "
                f"spread {spread_bps:7.3f} bp  levels {len(book.bid_price)}/{len(book.ask_price)}  {venues}",
                flush=True,
            )

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
    supervisor = Supervisor(
        config, default_actor_specs(config, with_simulator=True), extra_directory={"simulator": simulated}
    )
    supervisor.start()
    printer = _DemoPrinter(supervisor)
    started = time.monotonic()
    code = supervisor.run(duration_s=arguments.seconds, on_tick=printer)
    line, ok = printer.summary(time.monotonic() - started)
    printer.close()
    print(line, flush=True)
    return code or (0 if ok else 1)


def _control_endpoint(arguments: argparse.Namespace) -> str:
    config = _load(arguments.config)
    instance = arguments.instance or config.engine.instance
    directory = running_directory(instance)
    if directory is None:
        raise ControlError(f"no coby instance {instance!r} is running on this host (start one with 'coby run')")
    return directory["endpoints"]["control"]


def command_status(arguments: argparse.Namespace) -> int:
    reply = request(_control_endpoint(arguments), "status")
    if arguments.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0 if reply.get("ok") else 1
    print(f"instance {reply['instance']}  supervisor pid {reply['pid']}  up {reply['uptime_s']:.0f}s")
    print(f"{'actor':<22}{'pid':>8}  {'state':<9}{'restarts':>9}{'beat age':>10}{'cpu %':>8}{'rss MiB':>9}")
    for actor in reply["actors"]:
        age = "-" if actor["heartbeat_age_s"] is None else f"{actor['heartbeat_age_s']:.2f}s"
        print(
            f"{actor['name']:<22}{actor['pid'] or '-':>8}  {actor['state']:<9}{actor['restarts']:>9}"
            f"{age:>10}{actor['cpu_percent']:>8.1f}{actor['rss_bytes'] / 2**20:>9.1f}"
        )
    print(f"{'ring':<22}{'fill':>10}{'capacity':>10}{'fill %':>8}{'overflows':>10}{'records':>12}")
    for exchange, ring in reply["rings"].items():
        print(
            f"{exchange:<22}{ring['fill']:>10}{ring['capacity']:>10}{ring['fill_ratio'] * 100:>8.2f}"
            f"{ring['dropped_batches']:>10}{ring['written_records']:>12}"
        )
    print(
        f"{'exchange symbol':<30}{'frames':>9}{'applied':>9}{'levels':>10}{'snaps':>7}{'resyncs':>8}"
        f"{'gaps':>6}{'errors':>7}{'lag ms':>8}"
    )
    for exchange, report in reply.get("exchanges", {}).items():
        for symbol, counters in report["symbols"].items():
            print(
                f"{exchange + ' ' + symbol:<30}{counters['frames']:>9}{counters['frames_applied']:>9}"
                f"{counters['levels_applied']:>10}{counters['snapshots']:>7}{counters['resyncs']:>8}"
                f"{counters['gaps']:>6}{counters['parse_errors']:>7}{counters['receive_lag_ns'] / 1e6:>8.1f}"
            )
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
    code = supervisor.run(duration_s=arguments.seconds)
    print(f"recorded {len(config.exchange_ids())} exchange(s) into {out}; replay with: coby verify {out}", flush=True)
    return code


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
    record.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    record.add_argument("--simulated", action="store_true", help="record the local simulator instead of the exchanges")
    verify = command("verify", command_verify, "replay recorded exchange traffic through the connectors (offline)")
    verify.add_argument("paths", nargs="+", help="recorded files, or directories of them")
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
