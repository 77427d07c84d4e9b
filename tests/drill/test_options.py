"""The drill's command-line options and [drill] keys are checked before anything runs."""

from __future__ import annotations

import pytest

from ttsha.cli import main
from ttsha.drill.traffic import _TAG
from ttsha.errors import ConfigError, Refused


def test_the_seed_alphabet_is_a_hundred_distinct_characters():
    assert len(_TAG) == 100 and len(set(_TAG)) == 100


@pytest.mark.parametrize("argv, message", [
    (["--rate", "5", "--load", "0.8"], "give --rate or --load, not both"),
    (["--load", "3"], "--load must be above 0 and at most 2"),
    (["--concurrency", "0"], "--concurrency must be between 1 and 256"),
    (["--seed", "-1"], "--seed must be between 0"),
    (["--mix", "new=-1,hot=1"], "non-negative"),
    (["--mix", "new=0"], "at least one of new, hot and fetch"),
    (["--mix", "warm=1"], "KIND=WEIGHT"),
])
def test_bad_drill_options_are_usage_errors(capsys, tmp_path, argv, message):
    config = tmp_path / "ttsha.toml"
    config.write_text(f'[monitor]\ncontrol_socket = "{tmp_path}/none.sock"\nstate_file = "{tmp_path}/m.json"\n')
    code = main(["--config", str(config), "failover", "--drill", *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_drill_options_need_drill(capsys):
    assert main(["failover", "--to", "standby", "--load", "0.8"]) == 2
    assert "go with --drill" in capsys.readouterr().err


def test_a_mix_of_nothing_is_a_config_error(capsys, tmp_path):
    config = tmp_path / "ttsha.toml"
    config.write_text("[drill]\nmix_new = 0\nmix_hot = 0\nmix_fetch = 0\n")
    assert main(["--config", str(config), "config", "check"]) == 3
    assert f"{config}: drill.mix_new: at least one of" in capsys.readouterr().err


def test_resolve_the_traffic_from_config_and_options():
    from ttsha.config import parse
    from ttsha.drill import DrillOptions, Mix
    from ttsha.drill.core import resolve

    drill = parse({"drill": {"rate": 7.0, "load": 0.8, "concurrency": 4, "mix_fetch": 0}}).drill
    settings, traffic = resolve(drill, DrillOptions())
    assert (traffic.load, traffic.rate, traffic.concurrency) == (0.8, 7.0, 4)  # load wins; rate set once measured
    assert traffic.mix == Mix(0.5, 0.25, 0.0) and 100_000 <= traffic.seed < 1_000_000
    _, traffic = resolve(drill, DrillOptions(rate=3.0, seed=42, mix=Mix(1, 0, 0), duration=12.0))
    assert (traffic.load, traffic.rate, traffic.seed, traffic.mix, traffic.duration) == \
        (None, 3.0, 42, Mix(1, 0, 0), 12.0)
    settings, traffic = resolve(parse({}).drill, DrillOptions(load=0.5, concurrency=16))
    assert (traffic.load, traffic.concurrency, settings.duration) == (0.5, 16, 30.0)
    _, traffic = resolve(parse({}).drill, DrillOptions())
    assert traffic.load is None and traffic.rate == 5.0  # [drill] load = 0: the configured rate
    assert resolve(drill, DrillOptions())[1].seed != resolve(drill, DrillOptions())[1].seed


KEY = "drill-0123456789abcdef0123456789"


def _keys_config(tmp_path, drill_key: str | None, mode: int = 0o600) -> str:
    keys = tmp_path / "api_keys"
    keys.write_text(f"app k-0123456789abcdef0123\ndrill {KEY} 1000r/s\n")
    keys.chmod(0o600)
    text = (f'[monitor]\ncontrol_socket = "{tmp_path}/none.sock"\nstate_file = "{tmp_path}/m.json"\n'
            f'[nginx]\napi_keys_file = "{keys}"\n')
    if drill_key is not None:
        path = tmp_path / "drill.key"
        path.write_text(drill_key + "\n")
        path.chmod(mode)
        text += f'[drill]\napi_key_file = "{path}"\n'
    config = tmp_path / "ttsha.toml"
    config.write_text(text)
    return str(config)


@pytest.mark.parametrize(("drill_key", "mode", "error", "message"), [
    (None, 0o600, Refused, "set [drill] api_key_file"),  # keys required, none for the drill: all 401
    ("other-0123456789abcdef01234", 0o600, Refused, "not one of [nginx] api_keys_file"),
    (KEY, 0o644, ConfigError, "drill.api_key_file"),  # a key others can read
    ("not a key", 0o600, ConfigError, "drill.api_key_file"),
])
def test_a_drill_through_a_gateway_with_keys_needs_a_good_key(capsys, tmp_path, drill_key, mode, error, message):
    assert main(["--config", _keys_config(tmp_path, drill_key, mode), "failover", "--drill"]) == error.exit_code
    assert message in capsys.readouterr().err


def test_with_the_right_key_the_drill_goes_on_to_its_other_checks(capsys, tmp_path):
    code = main(["--config", _keys_config(tmp_path, KEY), "failover", "--drill"])
    err = capsys.readouterr().err
    assert "no monitor runs" in err and "api_key" not in err and KEY not in err and code != 0
