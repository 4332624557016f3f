"""The daemon never loses its definitions: the watcher survives any error, and a daemon
started while an edit is invalid runs the last good definitions kept in the database."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import watchfiles
from freezegun import freeze_time

from engine import clock, daemon, last_good
from engine.daemon import Daemon, definitions_to_run
from engine.definitions import Definitions
from engine.errors import DefinitionError
from engine.outcomes import Status
from engine.validate import check_definitions
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic, patient
from tests.test_daemon import practice, start, wait_for  # noqa: F401 (fixture)

BROKEN = ("trigger: patient.created", "trigger: patient.creatd")


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    """A practice with its own copy of the shipped schedules and templates."""
    for folder, source in (("schedules", LIBRARY_SCHEDULES),
                           ("message_templates", LIBRARY_TEMPLATES)):
        shutil.copytree(source, tmp_path / folder)
    clinic = Clinic(database_url, tmp_path, schedules=tmp_path / "schedules",
                    templates=tmp_path / "message_templates")
    yield clinic
    clinic.close()


def load(clinic: Clinic) -> Definitions:
    return check_definitions(clinic.settings, clock.now()).raise_for_errors()


def make_daemon(clinic: Clinic, **options: Any) -> Daemon:
    return Daemon(clinic.settings, clinic.db, clinic.definitions,
                  {"sms": clinic.sms, "email": clinic.email}, lambda: load(clinic),
                  watch=False, **options)


def break_welcome(clinic: Clinic) -> None:
    path = clinic.settings.schedules_dir / "welcome.yaml"
    path.write_text(path.read_text().replace(*BROKEN), encoding="utf-8")


# --------------------------------------------------------------------------- the watcher


def test_the_watcher_survives_a_failing_reload_and_a_failing_watch(
        clinic: Clinic, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    loads: list[str] = []

    def flaky_load() -> Definitions:
        loads.append("load")
        if len(loads) == 1:
            raise RuntimeError("disk went away")
        return load(clinic)

    watches: list[str] = []

    def fake_watch(*folders: str, stop_event: threading.Event, **_: Any,
                   ) -> Iterator[set[tuple[watchfiles.Change, str]]]:
        watches.append("watch")
        if len(watches) == 1:
            raise OSError("inotify watch limit reached")
        yield set()  # in place
        for _ in range(2):
            yield {(watchfiles.Change.modified, folders[0] + "/welcome.yaml")}
        stop_event.set()

    monkeypatch.setattr(watchfiles, "watch", fake_watch)
    monkeypatch.setattr(daemon, "WATCH_RETRY_SECONDS", 0.01)
    watcher = Daemon(clinic.settings, clinic.db, clinic.definitions, {}, flaky_load,
                     watch=False)
    with caplog.at_level(logging.INFO, logger="touchpoint.daemon"):
        thread = threading.Thread(target=watcher._watch)
        thread.start()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert watches == ["watch", "watch"]  # it watched again after the failure
    text = caplog.text
    assert "watching for edits failed (OSError: inotify watch limit reached); watching " \
           "again" in text
    assert "files changed: the definitions could not be loaded (RuntimeError: disk went " \
           "away), still running the last good ones" in text
    assert "files changed: reloaded 9 journeys" in text  # the next edit still reloads


def test_a_reload_that_raises_anything_keeps_the_last_good_definitions(clinic: Clinic) -> None:
    def broken() -> Definitions:
        raise KeyError("surprise")

    running = Daemon(clinic.settings, clinic.db, clinic.definitions, {}, broken, watch=False)
    assert running.reload("SIGHUP") is False
    assert running.runner.definitions is clinic.definitions


# --------------------------------------------------------------------------- last good


def test_valid_definitions_are_kept_once_and_again_when_a_file_changes(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T15:00:00Z"):
        assert last_good.save(clinic.db, clinic.settings, clock.now()) is True
        assert last_good.save(clinic.db, clinic.settings, clock.now()) is False  # unchanged
        template = clinic.settings.templates_dir / "welcome" / "welcome.sms.j2"
        template.write_text(template.read_text().replace("Welcome", "Hello"), encoding="utf-8")
        assert last_good.save(clinic.db, clinic.settings, clock.now()) is True


def test_a_daemon_started_with_an_invalid_schedule_runs_the_last_good_ones_and_says_so(
        clinic: Clinic, caplog: pytest.LogCaptureFixture) -> None:
    with freeze_time("2026-11-02T15:00:00Z"):
        make_daemon(clinic).keep_definitions()  # what a daemon does when it starts
        break_welcome(clinic)
        with pytest.raises(DefinitionError):
            load(clinic)

        with caplog.at_level(logging.INFO, logger="touchpoint.daemon"):
            definitions, restored = definitions_to_run(clinic.settings, clinic.db,
                                                       lambda: load(clinic))
        assert restored is not None
        assert "welcome.yaml:7: unknown trigger event 'patient.creatd'" in caplog.text
        assert "running the last good definitions, kept 2026-11-02T15:00:00Z (9 journeys)" \
            in caplog.text
        assert sorted(definitions.journeys) == sorted(clinic.definitions.journeys)

        clinic.patients(patient("P1"))
        running = make_daemon(clinic, restored=restored)
        running.tick()
        welcome = clinic.one("welcome", "welcome")
        assert welcome.status == Status.SENT  # the kept welcome journey runs
        assert "Welcome to Riverside Physical Therapy" in clinic.sms.sent[0].body

        running.keep_definitions()  # the files are invalid: the kept ones stay
        assert last_good.restore(clinic.db, clinic.settings, clock.now()) is not None
        restored.remove()
        assert not restored.folder.exists()


def test_with_invalid_files_and_nothing_kept_the_daemon_refuses_to_start(
        clinic: Clinic) -> None:
    break_welcome(clinic)
    with pytest.raises(DefinitionError) as raised:
        definitions_to_run(clinic.settings, clinic.db, lambda: load(clinic))
    assert "unknown trigger event 'patient.creatd'" in raised.value.message
    assert "no last good definitions are kept in the database yet" in raised.value.message


def test_a_reload_of_valid_files_after_starting_on_the_kept_ones_keeps_the_new(
        clinic: Clinic) -> None:
    with freeze_time("2026-11-02T15:00:00Z"):
        make_daemon(clinic).keep_definitions()
        path = clinic.settings.schedules_dir / "welcome.yaml"
        good = path.read_text()
        break_welcome(clinic)
        _, restored = definitions_to_run(clinic.settings, clinic.db, lambda: load(clinic))
        running = make_daemon(clinic, restored=restored)
        path.write_text(good.replace("id: what-to-expect", "id: what-to-bring"), encoding="utf-8")
        assert running.reload("files changed") is True
        assert running.on_last_good is False
        restored_again = last_good.restore(clinic.db, clinic.settings, clock.now())
        assert restored_again is not None
        assert restored_again.definitions.journeys["welcome"].step("what-to-bring")
        restored_again.remove()
        assert restored is not None
        restored.remove()


@pytest.mark.slow
def test_a_daemon_process_started_on_a_broken_edit_runs_the_last_good_definitions(
        practice: tuple[Path, dict[str, str]]) -> None:  # noqa: F811 (the fixture)
    folder, env = practice
    first, log = start(folder, env, "--no-watch")
    wait_for(lambda: "daemon started" in log.read_text())
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    schedule = folder / "schedules" / "welcome.yaml"
    schedule.write_text(schedule.read_text().replace(*BROKEN))

    second, log = start(folder, env, "--no-watch")
    try:
        wait_for(lambda: "on the last good definitions" in log.read_text())
        text = log.read_text()
        assert "welcome.yaml:7: unknown trigger event 'patient.creatd'" in text
        assert "running the last good definitions, kept " in text
        assert second.poll() is None
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
