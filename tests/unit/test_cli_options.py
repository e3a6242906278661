"""The `crowd-gateway` command line as issue 14 found it: version, help texts, bad options, config errors,
the startup line, and a CLI that starts where `fcntl` does not exist."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser, log_startup, main
from gateway.config import ConfigError, load_config, parse_config
from gateway.tools.embedded import v1_url

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"members": [{"name": "m1", "base_url": "http://127.0.0.1:9/v1", "model": "m1"},
                      {"name": "m2", "base_url": "http://127.0.0.1:9/v1", "model": "m2"}],
          "ensembles": [{"name": "crowd", "members": ["m1", "m2"], "quorum": 1}]}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "crowd-gateway 0.1.0"


def parsers(parser: argparse.ArgumentParser, name: str = "crowd-gateway") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_subcommand_has_help() -> None:
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, parser in parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert missing == []
    assert len(list(parsers(build_parser()))) >= 11  # serve, annotate, report, eval, tune, demo, pool up/down/status


def test_every_subcommand_says_what_it_does_and_annotate_shows_its_defaults() -> None:
    """Issue 23: `serve`, `eval` and `pool --help` had no description; `annotate --help` hid its defaults."""
    silent = [name for name, parser in parsers(build_parser()) if name != "crowd-gateway" and not parser.description]
    assert silent == []
    annotate = dict(parsers(build_parser()))["crowd-gateway annotate"].format_help()
    for shown in ("(default: text)", "(default: crowd)", "(default: 16)", "(default: 2)", "(default: 120.0)"):
        assert shown in " ".join(annotate.split()), shown


def test_a_running_cost_at_local_prices_is_not_shown_as_zero() -> None:
    from gateway.tools.annotate import Tally

    tally = Tally()
    tally.add({"agreement": 1.0}, 0.0000231)
    assert "cost=$0.000023" in tally.postfix()


def test_an_unknown_log_level_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--log-level", "loud"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("crowd-gateway serve: error: argument --log-level: invalid choice: 'loud'")


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("members:\n  - name: a\n   bad: [\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f'in "{path}", line 3' in message and "<unicode string>" not in message and "\n" not in message


def test_the_cli_starts_without_fcntl() -> None:
    """`fcntl` does not exist on Windows; blocking its import stands in for running there."""
    code = ("import sys; sys.modules['fcntl'] = None; from gateway.cli import main; "
            "sys.exit(main(['report', 'missing.csv']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "crowd-gateway report: cannot read missing.csv" in run.stderr


@pytest.mark.parametrize("url", ["http://gw:8080", "http://gw:8080/", "http://gw:8080/v1", "http://gw:8080/v1/"])
def test_gateway_urls_are_accepted_with_or_without_v1(url: str) -> None:
    assert v1_url(url) == "http://gw:8080/v1"


def serve_args() -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--port", "8123"])


def test_startup_line_summarises_the_config_and_warns_when_auth_is_off(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWD_GATEWAY_API_KEYS", "")
    with caplog.at_level(logging.INFO, logger="crowd_gateway"):
        log_startup(parse_config(CONFIG), serve_args())
    (info, warning) = caplog.records
    assert info.levelno == logging.INFO
    assert "http://127.0.0.1:8123" in info.message and "ensembles crowd (2 members, majority)" in info.message
    assert "2 members; store memory; auth off ($CROWD_GATEWAY_API_KEYS is empty)" in info.message
    assert warning.levelno == logging.WARNING and "auth is off" in warning.message


def test_startup_line_with_keys_says_auth_is_on(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWD_GATEWAY_API_KEYS", "k1,k2")
    with caplog.at_level(logging.INFO, logger="crowd_gateway"):
        log_startup(parse_config(CONFIG), serve_args())
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "auth on (2 keys in $CROWD_GATEWAY_API_KEYS)" in caplog.records[0].message
