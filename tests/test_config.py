"""engine.config: loading, validation messages, environment overrides, and no drift between
config.yaml, the dataclass defaults and docs/config.md."""

import dataclasses
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import pytest
import yaml

from engine.config import (
    Config,
    ConfigError,
    ExchangeConfig,
    FrozenMap,
    load_config,
    only_these_exchanges,
    render_markdown,
)

ROOT = Path(__file__).resolve().parents[1]


def leaf_keys(data: dict, prefix: str = "") -> set[str]:
    """Dotted paths of every value in nested dicts (an empty dict counts as a value)."""
    keys = set()
    for name, value in data.items():
        dotted = f"{prefix}{name}"
        keys |= leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else {dotted}
    return keys


def error_of(**load_arguments) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(**{"env": {}, **load_arguments})
    return str(caught.value)


@pytest.fixture
def empty_directory(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_pure_defaults_load_when_there_is_no_file(empty_directory):
    config = load_config(env={})
    assert config == Config()
    assert config.engine.runtime_dir == "/tmp/coby-main"
    assert config.storage.sqlite_path == "./data/coby.sqlite"


def test_config_yaml_loads_to_exactly_the_defaults():
    assert load_config(ROOT / "config.yaml", env={}) == Config()


def test_config_yaml_lists_every_key():
    written = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert leaf_keys(written) == leaf_keys(Config().to_dict())


def test_docs_config_md_is_the_generator_output():
    assert (ROOT / "docs" / "config.md").read_text() == render_markdown(), (
        "regenerate: python -m engine.config --markdown > docs/config.md"
    )


def declared_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every declared key as it appears in the reference: sections, keys, and `<entry>` fields of mappings."""
    hints = get_type_hints(cls)
    for declared in dataclasses.fields(cls):
        dotted, hint = prefix + declared.name, hints[declared.name]
        yield dotted, declared
        if dataclasses.is_dataclass(hint):
            yield from declared_keys(hint, dotted + ".")
        elif get_origin(hint) is FrozenMap and dataclasses.is_dataclass(get_args(hint)[1]):
            yield from declared_keys(get_args(hint)[1], f"{dotted}.<{declared.metadata['entry']}>.")


def test_every_key_is_documented_in_the_reference():
    markdown = render_markdown()
    keys = dict(declared_keys(Config))
    assert "exchanges.<exchange>.ws_url" in keys and "simulator.symbols.<symbol>.lot" in keys
    for dotted, declared in keys.items():
        assert declared.metadata["doc"], f"{dotted} has no documentation"
        assert f"`{dotted}`" in markdown, f"{dotted} is missing from the reference"


def test_module_prints_the_markdown():
    result = subprocess.run(
        [sys.executable, "-m", "engine.config", "--markdown"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout == render_markdown()


@pytest.mark.parametrize(
    ("overrides", "dotted", "section"),
    [
        ({"engin": {}}, "engin", "at the top level"),
        ({"aggregator": {"publish_intervl_ms": 5}}, "aggregator.publish_intervl_ms", "in 'aggregator'"),
        ({"exchanges": {"binance": {"snapshot_dept": 5}}}, "exchanges.binance.snapshot_dept", "in 'exchanges.binance'"),
        ({"actors": {"storage": {"niceness": 5}}}, "actors.storage.niceness", "in 'actors.storage'"),
        ({"simulator": {"symbols": {"BTC/USDT": {"price": 1.0}}}}, "simulator.symbols.BTC/USDT.price",
         "in 'simulator.symbols.BTC/USDT'"),
    ],
)
def test_unknown_key_names_the_dotted_key_and_the_allowed_keys(overrides, dotted, section):
    message = error_of(overrides=overrides)
    assert message.startswith(f"config error: unknown key '{dotted}'")
    assert f"allowed keys {section}:" in message


def test_unknown_key_suggests_the_close_one():
    message = error_of(overrides={"aggregator": {"publish_intervl_ms": 5}})
    assert "(did you mean 'publish_interval_ms'?)" in message
    assert "publish_interval_ms, stale_after_s, doorbell_timeout_ms" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exchanges": {"ftx": {"symbols": ["BTC/USD"]}}}, "unknown key 'exchanges.ftx': keys of 'exchanges' must be one of: binance,"),
        ({"actors": {"trader": {}}}, "unknown key 'actors.trader': keys of 'actors' must be one of: aggregator,"),
        ({"buckets": {"absolute": {"btc usdt": 1.0}}}, "unknown key 'buckets.absolute.btc usdt': keys of 'buckets.absolute' must be a canonical symbol or an `instruments` name"),
        ({"buckets": {"absolute": {"XRP/USDT": 1.0}}}, "unknown key 'buckets.absolute.XRP/USDT': bucket units are only for instruments"),
        ({"instruments": {"BTC-USD*": {"markets": ["BTC/USDT"], "quote": "USD"}}}, "instruments.BTC-USD*.convert = {}: must be an entry for USDT"),
        ({"instruments": {"BTC-USD*": {"markets": ["BTC/USDC"], "convert": {"USDC": "1:1"}}}}, "must be markets listed under an enabled exchange (BTC/USDC is not)"),
        ({"instruments": {"X*": {"markets": ["BTC/USDT"], "convert": {"USDT": "binance:USDT/EUR"}}}}, "instruments.X*.convert.USDT = binance:USDT/EUR: must be a book listed under the enabled exchange binance"),
        ({"instruments": {"X*": {"markets": ["BTC/USDT"], "convert": {"USDT": "binance:BTC/USDT"}}}}, "must be the book USDT/USD"),
    ],
)
def test_unknown_mapping_entry_is_refused(overrides, expected):
    assert expected in error_of(overrides=overrides)


def test_unknown_key_in_the_file_is_refused(tmp_path):
    path = tmp_path / "coby.yaml"
    path.write_text("shm:\n  ring_records: 1024\n  book_depht: 10\n")
    assert error_of(path=path).startswith("config error: unknown key 'shm.book_depht' (did you mean 'book_depth'?)")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"shm": {"ring_records": 1000}}, "shm.ring_records = 1000: must be a power of two between 1024 and 16777216"),
        ({"shm": {"ring_records": "big"}}, "shm.ring_records = big: must be an integer, a power of two between 1024 and 16777216"),
        ({"shm": {"book_slots": 1.5}}, "shm.book_slots = 1.5: must be an integer, between 2 and 16"),
        ({"shm": {"book_depth": True}}, "shm.book_depth = true: must be an integer"),
        ({"engine": {"log_level": "verbose"}}, "engine.log_level = verbose: must be one of: debug, info, warning, error"),
        ({"engine": {"instance": "Main-1"}}, "engine.instance = Main-1: must be 1 to 16 characters among a-z and 0-9"),
        ({"engine": {"instance": "demo_2"}}, "engine.instance = demo_2: must be 1 to 16 characters among a-z and 0-9"),
        ({"engine": {"data_dir": ""}}, 'engine.data_dir = "": must be a non-empty path'),
        ({"exchanges": {"binance": {"enabled": "yes"}}}, 'exchanges.binance.enabled = "yes": must be true or false'),
        ({"exchanges": {"binance": {"symbols": ["BTC/USDT", "btc-usdt"]}}}, "exchanges.binance.symbols[1] = btc-usdt: must be a canonical symbol"),
        ({"exchanges": {"binance": {"symbols": "BTC/USDT"}}}, "exchanges.binance.symbols = BTC/USDT: must be a list of strings"),
        ({"exchanges": {"binance": {"symbols": []}}}, "exchanges.binance.symbols = []: must be at least one symbol while the exchange is enabled"),
        ({"exchanges": {"binance": {"ws_url": "http://x"}}}, "exchanges.binance.ws_url = http://x: must be empty or a ws:// or wss:// URL"),
        ({"supervisor": {"heartbeat_timeout_s": 0.5}}, "supervisor.heartbeat_timeout_s = 0.5: must be greater than supervisor.heartbeat_interval_s (0.5)"),
        ({"supervisor": {"restart_period_s": 0}}, "supervisor.restart_period_s = 0: must be greater than 0"),
        ({"aggregator": {"stale_after_s": float("inf")}}, "aggregator.stale_after_s = inf: must be a finite number, greater than 0"),
        ({"endpoints": {"control": "tcp://127.0.0.1:70000"}}, "endpoints.control = tcp://127.0.0.1:70000: must be tcp://host:port (port 0-65535) or ipc://path"),
        ({"endpoints": {"bus_publish": "udp://127.0.0.1:1"}}, "endpoints.bus_publish = udp://127.0.0.1:1: must be tcp://host:port"),
        ({"endpoints": {"control": "tcp://0.0.0.0:7800"}}, "endpoints.control = tcp://0.0.0.0:7800: must be on a loopback host (127.0.0.1, ::1 or localhost) unless endpoints.allow_public is true"),
        ({"endpoints": {"bus_subscribe": "tcp://127.0.0.1:7801"}}, "endpoints.bus_subscribe = tcp://127.0.0.1:7801: must be different from endpoints.bus_publish"),
        ({"simulator": {"symbols": {"BTC/USDT": {"volatility": 0.5}}}}, "simulator.symbols.BTC/USDT.volatility = 0.5: must be between 0.0 and 0.1"),
        ({"shm": {"ring_records": 1024}}, "exchanges.binance.snapshot_depth = 1000: must be at most 510: a full snapshot (2003 records) must fit in shm.ring_records (1024)"),
        ({"simulator": {"host": "192.168.1.4"}}, "simulator.host = 192.168.1.4: must be a loopback host"),
        ({"storage": {"backend": "mysql"}}, "storage.backend = mysql: must be one of: sqlite, postgres"),
        ({"actors": {"aggregator": {"nice": -21}}}, "actors.aggregator.nice = -21: must be between -20 and 19"),
        ({"actors": {"aggregator": {"cpu_affinity": [4096]}}}, "actors.aggregator.cpu_affinity[0] = 4096: must be between 0 and 1023"),
        ({"buckets": {"absolute": {"BTC/USDT": 0}}}, "buckets.absolute.BTC/USDT = 0: must be greater than 0"),
        ({"shm": None, "storage": 5}, "storage = 5: must be a mapping with keys: backend, sqlite_path, postgres_dsn"),
    ],
)
def test_wrong_value_names_the_key_what_was_given_and_what_is_allowed(overrides, expected):
    assert error_of(overrides=overrides).startswith(f"config error: {expected}")


def test_public_and_port_zero_endpoints_are_allowed_when_asked():
    config = load_config(env={}, overrides={"endpoints": {
        "allow_public": True, "control": "tcp://0.0.0.0:0", "bus_publish": "tcp://[::1]:0",
        "bus_subscribe": "ipc:///tmp/coby-main/bus.sock",
    }})
    assert config.endpoints.control == "tcp://0.0.0.0:0"


def test_duplicate_key_in_the_file_is_refused(tmp_path):
    path = tmp_path / "coby.yaml"
    path.write_text("shm:\n  book_depth: 10\n  book_depth: 20\n")
    assert "duplicate key book_depth" in error_of(path=path)


def test_missing_file_is_an_error(tmp_path):
    assert error_of(path=tmp_path / "absent.yaml") == f"config error: config file '{tmp_path / 'absent.yaml'}' does not exist"


def test_coby_config_variable_chooses_the_file(tmp_path, empty_directory):
    path = tmp_path / "other.yaml"
    path.write_text("shm:\n  ring_records: 4096\n")
    assert load_config(env={"COBY_CONFIG": str(path)}).shm.ring_records == 4096


def test_environment_overrides_an_integer():
    config = load_config(ROOT / "config.yaml", env={"COBY_SHM__RING_RECORDS": "65536"})
    assert config.shm.ring_records == 65536


def test_environment_overrides_a_list_in_a_nested_exchange_key():
    config = load_config(ROOT / "config.yaml", env={"COBY_EXCHANGES__BINANCE__SYMBOLS": "[BTC/USDT, ETH/USDT]"})
    assert config.exchanges["binance"].symbols == ("BTC/USDT", "ETH/USDT")
    assert config.exchanges["binance"].ws_url == "wss://stream.binance.com:9443"


def test_environment_names_are_case_insensitive():
    config = load_config(env={"coby_engine__LOG_LEVEL": "debug", "COBY_Exchanges__Binance__Rest_Timeout_S": "2.5",
                              "COBY_BUCKETS__ABSOLUTE__btc/usdt": "25"})
    assert config.engine.log_level == "debug"
    assert config.exchanges["binance"].rest_timeout_s == 2.5
    assert config.buckets.absolute["BTC/USDT"] == 25.0


def test_environment_string_keys_take_the_text_as_written():
    assert load_config(env={"COBY_ENGINE__INSTANCE": "007"}).engine.instance == "007"


def test_environment_changes_one_exchange_and_keeps_the_others(empty_directory):
    config = load_config(env={"COBY_EXCHANGES__KRAKEN__SYMBOLS": "[BTC/USD, BTC/USDT]"})
    assert list(config.exchanges) == list(Config().exchanges)
    assert config.exchanges["kraken"].symbols == ("BTC/USD", "BTC/USDT")
    assert config.exchanges["kraken"].ws_url == Config().exchanges["kraken"].ws_url


def test_unknown_environment_key_is_an_error():
    message = error_of(env={"COBY_SHM__RING_RECORD": "1024"})
    assert message == (
        "config error: unknown key 'shm.ring_record' (did you mean 'ring_records'?); allowed keys in 'shm': "
        "ring_records, book_depth, book_slots, feature_rows, feature_width (set by environment variable "
        "COBY_SHM__RING_RECORD)"
    )
    assert "'shm.ring_records' is a value, not a section" in error_of(env={"COBY_SHM__RING_RECORDS__SIZE": "1"})


def test_wrong_environment_value_names_the_variable():
    message = error_of(env={"COBY_ENGINE__LOG_LEVEL": "loud"})
    assert message == ("config error: engine.log_level = loud: must be one of: debug, info, warning, error "
                       "(set by environment variable COBY_ENGINE__LOG_LEVEL)")


def test_environment_without_separator_is_not_an_override(empty_directory):
    env = {"COBY_RECORDED_DIR": "/nowhere", "COBY_PYTHON": "python3", "COBY_SHMRING": "x", "HOME_COBY__X": "1"}
    assert load_config(env=env) == Config()


def test_overrides_apply_last_and_merge_key_by_key():
    config = load_config(
        ROOT / "config.yaml",
        env={"COBY_SHM__RING_RECORDS": "65536", "COBY_SHM__BOOK_DEPTH": "50"},
        overrides={"shm": {"ring_records": 2048}, "exchanges": {"binance": {"enabled": False},
                                                               "coinbase": {"symbols": ["ETH/USD"]}}},
    )
    assert (config.shm.ring_records, config.shm.book_depth) == (2048, 50)
    assert config.exchanges["binance"].symbols == ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    assert config.exchanges["coinbase"].symbols == ("ETH/USD",)
    assert config.exchanges["coinbase"].ws_url == "wss://ws-feed.exchange.coinbase.com"  # the rest of the entry kept
    assert list(config.exchange_ids())[:2] == ["binance_futures", "coinbase"]


def test_only_these_exchanges_enables_exactly_those():
    overrides = {"exchanges": only_these_exchanges({"kraken": {"symbols": ["BTC/USDT"]}, "okx": {}})}
    config = load_config(ROOT / "config.yaml", env={}, overrides=overrides)
    assert config.exchange_ids() == {"kraken": 0, "okx": 1}
    assert config.exchanges["okx"].symbols == ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BTC/USDT:PERP", "ETH/USDT:PERP")


def test_file_mapping_replaces_the_default_mapping(tmp_path):
    path = tmp_path / "coby.yaml"
    path.write_text("exchanges:\n  kraken:\n    symbols: [BTC/USDT, ETH/USDT]\n")
    assert list(load_config(path, env={}).exchanges) == ["kraken"]


def test_to_dict_round_trips():
    config = load_config(env={}, overrides={"engine": {"instance": "alt"}, "actors": {"api": {"nice": 5}}})
    assert load_config(env={}, overrides=config.to_dict()) == config
    assert yaml.safe_load(yaml.safe_dump(config.to_dict())) == config.to_dict()


def test_config_is_immutable_and_picklable():
    config = load_config(env={}, overrides={"actors": {"connector": {"nice": 3, "cpu_affinity": [0]}}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.shm.ring_records = 1024
    with pytest.raises(TypeError):
        config.exchanges["kraken"] = ExchangeConfig()
    restored = pickle.loads(pickle.dumps(config))
    assert restored == config
    assert restored.symbol_ids() == config.symbol_ids()
    assert hash(restored) == hash(config)


def test_symbol_and_exchange_ids_are_deterministic_and_skip_disabled_exchanges():
    overrides = {"exchanges": only_these_exchanges({
        "binance": {},
        "kraken": {"symbols": ["ETH/USD", "BTC/USDT"]},
        "bybit": {"symbols": ["BTC/USDT:PERP", "ETH/USD"]},
    }) | {"okx": {"enabled": False, "symbols": ["DOGE/USDT"]}}}
    first = load_config(env={}, overrides=overrides)
    second = load_config(env={}, overrides=overrides)
    assert first.exchange_ids() == second.exchange_ids() == {"binance": 0, "kraken": 1, "bybit": 2}
    assert first.symbols == second.symbols == ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ETH/USD", "BTC/USDT:PERP")
    assert first.symbol_ids() == {symbol: index for index, symbol in enumerate(first.symbols)}


@pytest.mark.parametrize(
    "env",
    [
        {"COBY_SHM__RING_RECORDS": "1000"},
        {"COBY_ENGINE__LOG_LEVEL": "de\nbug"},
        {"COBY_SHM__BOOK_DEPTH": "[1, 2"},
        {"COBY_EXCHANGES__NOWHERE__SYMBOLS": "[A/B]"},
    ],
)
def test_message_is_one_line_without_traceback_and_exit_status_is_2(env, empty_directory):
    result = subprocess.run(
        [sys.executable, "-m", "engine.config"], cwd=empty_directory, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), **env},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("config error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
