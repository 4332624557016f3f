"""engine/settings.py: flag > TOUCHPOINT_* env > touchpoint.toml > default, and its errors.

Every test passes ``environ=`` (and ``flags=``) explicitly; conftest runs each test in its
own empty folder, so ``./touchpoint.toml`` is the test's own.
"""

from __future__ import annotations

import json
import re
from datetime import time, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.errors import ConfigError
from engine.message_context import practice_fields
from engine.settings import SETTINGS, load_settings, parse_flag

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "settings.md"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(config: Path | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ=environ or {})
    return caught.value.message


# --------------------------------------------------------------------------- the order


@pytest.mark.parametrize(("layers", "expected"), [
    (("flag", "env", "file"), "sqlite:///from-flag.db"),
    (("env", "file"), "sqlite:///from-env.db"),
    (("flag", "file"), "sqlite:///from-flag.db"),
    (("file",), "sqlite:///from-file.db"),
    ((), "sqlite:///touchpoint.db"),
])
def test_a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default(
        tmp_path: Path, layers: tuple[str, ...], expected: str) -> None:
    config = write(tmp_path / "conf" / "touchpoint.toml",
                   '[database]\nurl = "sqlite:///from-file.db"\n' if "file" in layers else "")
    environ = {"TOUCHPOINT_DATABASE_URL": "sqlite:///from-env.db"} if "env" in layers else {}
    flags = {"database.url": "sqlite:///from-flag.db"} if "flag" in layers else {}
    settings = load_settings(config, flags=flags, environ=environ)
    assert settings.database_url == expected
    assert settings.describe()["database.url"] == expected


def test_the_order_holds_for_every_kind_of_setting(tmp_path: Path) -> None:
    config = write(tmp_path / "touchpoint.toml", """
[practice]
name = "File PT"
timezone = "America/Chicago"
[quiet_hours]
send_from = "09:00"
[dispatch]
batch_size = 10
default_expiry = "2d"
""")
    environ = {"TOUCHPOINT_PRACTICE_NAME": "Env PT", "TOUCHPOINT_SEND_UNTIL": "20:00",
               "TOUCHPOINT_BATCH_SIZE": "50", "TOUCHPOINT_MAX_ATTEMPTS": "3",
               "TOUCHPOINT_PHONE_REGION": "ca"}
    settings = load_settings(config, environ=environ)

    assert settings.practice.name == "Env PT"  # env over file
    assert settings.practice.timezone == "America/Chicago"  # file over default (None)
    assert (settings.send_from, settings.send_until) == (time(9, 0), time(20, 0))
    assert settings.dispatch.batch_size == 50  # env text becomes a number
    assert settings.dispatch.max_attempts == 3
    assert settings.dispatch.default_expiry == timedelta(days=2)
    assert settings.dispatch.send_timeout == timedelta(minutes=5)  # default
    assert settings.phone_region == "CA"
    assert settings.practice.language == "en"


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    config = write(tmp_path / "touchpoint.toml", '[practice]\nname = "File PT"\n')
    settings = load_settings(config, environ={"TOUCHPOINT_PRACTICE_NAME": ""})
    assert settings.practice.name == "File PT"


def test_the_config_file_is_found_by_flag_env_or_in_the_current_folder(tmp_path: Path) -> None:
    write(tmp_path / "touchpoint.toml", '[practice]\nname = "Here PT"\n')
    chosen = write(tmp_path / "elsewhere" / "clinic.toml", '[practice]\nname = "There PT"\n')
    other = write(tmp_path / "other.toml", '[practice]\nname = "Other PT"\n')

    here = load_settings(environ={})  # the test runs in tmp_path
    assert (here.practice.name, here.config_file) == ("Here PT", Path("touchpoint.toml"))
    by_env = load_settings(environ={"TOUCHPOINT_CONFIG": str(chosen)})
    assert (by_env.practice.name, by_env.config_file) == ("There PT", chosen)
    by_flag = load_settings(other, environ={"TOUCHPOINT_CONFIG": str(chosen)})
    assert by_flag.practice.name == "Other PT"


def test_without_a_config_file_everything_comes_from_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    assert settings.config_file is None
    assert settings.practice.name is None
    assert (settings.send_from, settings.send_until) == (time(8, 0), time(21, 0))
    assert settings.schedules_dir == Path("schedules")


def test_a_missing_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(config=missing, environ={}) == (
        f"{missing}: config file not found — check --config / TOUCHPOINT_CONFIG")


# --------------------------------------------------------------------------- paths


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "etc" / "touchpoint" / "touchpoint.toml", f"""
[paths]
schedules = "schedules"
templates = "{tmp_path / "abs" / "templates"}"
[channels]
fake_outbox = "../outbox/messages.jsonl"
""")
    settings = load_settings(config, environ={})
    folder = tmp_path / "etc" / "touchpoint"
    assert settings.schedules_dir == folder / "schedules"
    assert settings.templates_dir == tmp_path / "abs" / "templates"  # absolute stays
    assert settings.channels.fake_outbox == folder / "../outbox/messages.jsonl"


def test_relative_paths_from_flags_and_env_stay_relative_to_the_working_folder(
        tmp_path: Path) -> None:
    config = write(tmp_path / "etc" / "touchpoint.toml", '[paths]\nschedules = "s"\n'
                   'templates = "t"\n[channels]\nfake_outbox = "o.jsonl"\n')
    settings = load_settings(config, flags={"paths.schedules": "my-schedules"},
                             environ={"TOUCHPOINT_TEMPLATES": "my-templates",
                                      "TOUCHPOINT_FAKE_OUTBOX": "out.jsonl"})
    assert settings.schedules_dir == Path("my-schedules")
    assert settings.templates_dir == Path("my-templates")
    assert settings.channels.fake_outbox == Path("out.jsonl")


# --------------------------------------------------------------------------- file errors


@pytest.mark.parametrize(("toml", "message"), [
    ('[practice]\nnmae = "X"\n', "unknown setting practice.nmae — did you mean practice.name?"),
    ('[practise]\nname = "X"\n',
     "unknown setting practise.name — did you mean practice.name?"),
    ('[quiet_hours]\nsend_form = "09:00"\n',
     "unknown setting quiet_hours.send_form — did you mean quiet_hours.send_from?"),
    ('[dispatch]\nbatchsize = 5\n',
     "unknown setting dispatch.batchsize — did you mean dispatch.batch_size?"),
    ('[zebra]\nstripes = 3\n', "unknown setting zebra.stripes — see docs/settings.md"),
])
def test_an_unknown_key_in_the_file_is_an_error_with_a_suggestion(
        tmp_path: Path, toml: str, message: str) -> None:
    config = write(tmp_path / "clinic.toml", toml)
    assert config_error(config=config, environ={}) == f"{config}: {message}"


def test_an_unknown_key_in_the_default_file_names_it(tmp_path: Path) -> None:
    write(tmp_path / "touchpoint.toml", '[practice]\nnmae = "X"\n')
    assert config_error(environ={}) == (
        "touchpoint.toml: unknown setting practice.nmae — did you mean practice.name?")


def test_a_toml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    config = write(tmp_path / "clinic.toml", '[practice]\nname = "X"\nphone = \n')
    message = config_error(config=config, environ={})
    assert message.startswith(f"{config}: ")
    assert "line 3" in message
    assert message.endswith("— fix the TOML syntax")


def test_the_links_table_takes_any_names(tmp_path: Path) -> None:
    config = write(tmp_path / "touchpoint.toml", """
[practice.links]
book = "https://pt.example/book"
intake_form = "https://pt.example/intake"
""")
    settings = load_settings(config, environ={})
    assert settings.practice.links == {"book": "https://pt.example/book",
                                       "intake_form": "https://pt.example/intake"}


# --------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(("env", "message"), [
    ({"TOUCHPOINT_PRACTICE_TIMEZONE": "Mars/Olympus"},
     "setting practice.timezone (from TOUCHPOINT_PRACTICE_TIMEZONE): 'Mars/Olympus' is not a "
     "known timezone — use an IANA name such as America/New_York"),
    ({"TOUCHPOINT_PHONE_REGION": "XX"},
     "setting phone.default_region (from TOUCHPOINT_PHONE_REGION): 'XX' is not a phone region "
     "— use a code such as US or CA"),
    ({"TOUCHPOINT_SEND_FROM": "8am"},
     "setting quiet_hours.send_from (from TOUCHPOINT_SEND_FROM): '8am' is not a time of day — "
     'write it as HH:MM, e.g. "10:00"'),
    ({"TOUCHPOINT_DEFAULT_EXPIRY": "6 hours"},
     "setting dispatch.default_expiry (from TOUCHPOINT_DEFAULT_EXPIRY): '6 hours' is not a "
     "duration — write a number and a unit, e.g. 90m, 2h, 3d or 1w"),
    ({"TOUCHPOINT_BATCH_SIZE": "0"},
     "setting dispatch.batch_size (from TOUCHPOINT_BATCH_SIZE): Input should be greater than "
     "or equal to 1"),
    ({"TOUCHPOINT_SMS_PROVIDER": "twillio"},
     "setting channels.sms_provider (from TOUCHPOINT_SMS_PROVIDER): Input should be 'twilio', "
     "'fake' or 'console'"),
])
def test_an_invalid_value_names_the_setting_and_the_environment_variable(
        env: dict[str, str], message: str) -> None:
    assert config_error(environ=env) == message


@pytest.mark.parametrize(("toml", "message"), [
    ('[practice]\ntimezone = "Mars/Olympus"\n',
     "setting practice.timezone (from {path}: [practice]): 'Mars/Olympus' is not a known "
     "timezone — use an IANA name such as America/New_York"),
    ('[phone]\ndefault_region = "ZZ"\n',
     "setting phone.default_region (from {path}: [phone]): 'ZZ' is not a phone region — use a "
     "code such as US or CA"),
])
def test_an_invalid_value_in_the_file_names_the_setting_and_the_file(
        tmp_path: Path, toml: str, message: str) -> None:
    config = write(tmp_path / "clinic.toml", toml)
    assert config_error(config=config, environ={}) == message.format(path=config)


def test_send_from_after_send_until_names_the_settings_and_where_they_came_from(
        tmp_path: Path) -> None:
    config = write(tmp_path / "clinic.toml", '[quiet_hours]\nsend_until = "20:00"\n')
    message = config_error(config=config, environ={"TOUCHPOINT_SEND_FROM": "22:00"})
    assert "22:00" in message and "20:00" in message
    assert "quiet_hours.send_from" in message and "TOUCHPOINT_SEND_FROM" in message
    assert "quiet_hours.send_until" in message and str(config) in message


def test_send_from_after_send_until_is_refused(tmp_path: Path) -> None:
    message = config_error(environ={"TOUCHPOINT_SEND_FROM": "22:00"})
    assert "quiet_hours.send_from (22:00, from TOUCHPOINT_SEND_FROM) must be before " \
        "quiet_hours.send_until (21:00, from default)" in message


# --------------------------------------------------------------------------- require


@pytest.mark.parametrize(("key", "message"), [
    ("practice.name", "setting practice.name is not set — set it with TOUCHPOINT_PRACTICE_NAME, "
                      "or [practice] name in touchpoint.toml"),
    ("practice.timezone", "setting practice.timezone is not set — set it with "
                          "TOUCHPOINT_PRACTICE_TIMEZONE, or [practice] timezone in "
                          "touchpoint.toml"),
    ("channels.sms_provider", "setting channels.sms_provider is not set — set it with "
                              "--sms-provider, TOUCHPOINT_SMS_PROVIDER, or [channels] "
                              "sms_provider in touchpoint.toml"),
])
def test_a_missing_required_setting_says_where_to_set_it(key: str, message: str) -> None:
    settings = load_settings(environ={})
    with pytest.raises(ConfigError) as caught:
        settings.require(key)
    assert caught.value.message == message


def test_require_returns_a_value_that_is_set(tmp_path: Path) -> None:
    settings = load_settings(environ={"TOUCHPOINT_PRACTICE_NAME": "Riverside PT",
                                      "TOUCHPOINT_PRACTICE_TIMEZONE": "America/Chicago"})
    assert settings.require("practice.name") == "Riverside PT"
    assert settings.require("practice.timezone") == "America/Chicago"
    assert settings.require("database.url") == "sqlite:///touchpoint.db"


# --------------------------------------------------------------------------- links


def test_links_come_from_the_environment_as_name_equals_url_pairs(tmp_path: Path) -> None:
    config = write(tmp_path / "touchpoint.toml",
                   '[practice.links]\nbook = "https://file.example/book"\n')
    settings = load_settings(config, environ={
        "TOUCHPOINT_PRACTICE_LINKS": "book=https://pt.example/book?a=1, "
                                     "directions = https://pt.example/map,"})
    # the variable replaces the file's table whole; '=' inside a URL is kept
    assert settings.practice.links == {"book": "https://pt.example/book?a=1",
                                       "directions": "https://pt.example/map"}
    assert settings.describe()["practice.links"] == str(settings.practice.links)


def test_a_malformed_links_variable_says_how_to_write_it() -> None:
    assert config_error(environ={"TOUCHPOINT_PRACTICE_LINKS": "book=https://x,directions"}) == (
        "TOUCHPOINT_PRACTICE_LINKS: write NAME=URL pairs separated by commas")


# --------------------------------------------------------------------------- describe


def test_describe_shows_every_setting_with_its_effective_value(tmp_path: Path) -> None:
    config = write(tmp_path / "touchpoint.toml", '[practice]\nname = "Riverside PT"\n'
                   '[dispatch]\nsend_timeout = "90m"\nretry_backoff = "120m"\n')
    shown = load_settings(config, environ={"TOUCHPOINT_SEND_FROM": "7:30"}).describe()

    assert list(shown) == [s.key for s in SETTINGS]
    assert shown["practice.name"] == "Riverside PT"
    assert shown["practice.phone"] == "None"
    assert shown["quiet_hours.send_from"] == "07:30"
    assert shown["quiet_hours.send_until"] == "21:00"
    assert shown["dispatch.send_timeout"] == "90m"
    assert shown["dispatch.retry_backoff"] == "2h"
    assert shown["dispatch.default_expiry"] == "1d"
    assert shown["dispatch.batch_size"] == "500"
    assert shown["paths.schedules"] == "schedules"
    assert shown["channels.fake_outbox"] == "None"


# --------------------------------------------------------------------------- the docs


def _docs_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def _documented_default(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as written in TOML
    if value in ("", {}):
        return "(empty)"
    return f"`{value}`"


def test_every_setting_is_documented_with_its_variable_flag_and_default() -> None:
    rows = _docs_rows()
    assert sorted(rows) == sorted(s.key for s in SETTINGS)
    for setting in SETTINGS:
        _key, env, flag, default, _help = rows[setting.key]
        assert env == f"`{setting.env}`", setting.key
        assert flag == (f"`{setting.flag}`" if setting.flag else ""), setting.key
        assert default == _documented_default(setting.default), setting.key


def test_every_environment_variable_in_the_docs_is_a_real_setting() -> None:
    text = DOCS.read_text(encoding="utf-8")
    named = set(re.findall(r"TOUCHPOINT_[A-Z0-9_]+", text))
    real = {s.env for s in SETTINGS if s.env.startswith("TOUCHPOINT_")}
    assert real <= named  # every setting's variable is in the docs...
    assert {s.env for s in SETTINGS} <= set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", text))
    # ...and nothing else is, except TOUCHPOINT_CONFIG, which chooses the file itself
    assert named - real == {"TOUCHPOINT_CONFIG"}


def test_the_config_variable_named_in_the_docs_chooses_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "somewhere" / "x.toml", '[practice]\nphone = "+13125550199"\n')
    settings = load_settings(environ={"TOUCHPOINT_CONFIG": str(config)})
    assert settings.practice.phone == "+13125550199"
    assert settings.config_file == config


# --------------------------------------------------------------------------- --set


def test_any_setting_can_be_given_as_a_flag_and_beats_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "touchpoint.toml", '[twilio]\nfrom_number = "+13125550101"\n')
    result = CliRunner(env={"TWILIO_FROM_NUMBER": "+13125550102"}).invoke(cli, [
        "--config", str(config), "--set", "twilio.from_number=+13125550103",
        "--set", "practice.links=book=https://pt.example/book", "--set",
        "twilio.auth_token=not-to-be-printed", "--set", "quiet_hours.send_from=09:00",
        "config", "--json"])

    assert result.exit_code == 0, result.output
    assert "not-to-be-printed" not in result.output
    values = json.loads(result.stdout)["settings"]
    assert values["twilio.from_number"] == "+13125550103"
    assert values["practice.links"] == str({"book": "https://pt.example/book"})
    assert values["quiet_hours.send_from"] == "09:00"
    assert values["twilio.auth_token"] != ""  # set, and masked


@pytest.mark.parametrize(("assignment", "message"), [
    ("twilio.from_numbr=+13125550100",
     "--set twilio.from_numbr: not a setting — did you mean twilio.from_number?"),
    ("twilio.auth_token", "--set: write KEY=VALUE, e.g. --set twilio.from_number=+13125550100"),
])
def test_a_bad_set_flag_says_what_to_write(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_flag(assignment)
    assert caught.value.message == message


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("as_json", [False, True])
def test_config_masks_the_password_in_the_database_url(tmp_path: Path, as_json: bool) -> None:
    url = "postgresql+psycopg://touchpoint:s3cr%40t-pw@db.example:5432/touchpoint"
    result = CliRunner(env={"TOUCHPOINT_DATABASE_URL": url}).invoke(
        cli, ["config", *(["--json"] if as_json else [])])

    assert result.exit_code == 0, result.output
    assert "s3cr" not in result.output
    masked = "postgresql+psycopg://touchpoint:***@db.example:5432/touchpoint"
    if as_json:
        assert json.loads(result.stdout)["settings"]["database.url"] == masked
    else:
        assert f"  database.url = {masked}\n" in result.stdout


def test_config_does_not_show_a_database_url_it_cannot_read(tmp_path: Path) -> None:
    settings = load_settings(environ={"TOUCHPOINT_DATABASE_URL": "tp:secret@db/touchpoint"})
    assert settings.describe()["database.url"] == "<invalid database URL>"


def test_visit_price_is_shown_to_templates_as_money_and_a_bad_currency_is_named(
        tmp_path: Path) -> None:
    config = tmp_path / "touchpoint.toml"
    config.write_text("", encoding="utf-8")
    settings = load_settings(config, environ={"TOUCHPOINT_VISIT_PRICE": "120",
                                              "TOUCHPOINT_CURRENCY": "eur"})
    assert practice_fields(settings)["visit_price"] == "€120"
    assert practice_fields(load_settings(config, environ={}))["visit_price"] == ""
    with pytest.raises(ConfigError, match="ISO 4217"):
        load_settings(config, environ={"TOUCHPOINT_CURRENCY": "dollars"})
