"""Revocation by any reasonable means (FCC 24-24): engine/replies_optout.toml and how
engine/replies.py reads a text with it.

The parametrised tests read the file itself, so an entry added to it is tested too: each
keyword in its variants (emoji, brackets, ellipsis, full-width letters, zero-width
characters), each phrase, each possible opt-out and each filler. Near-misses must not
opt anyone out. The end-to-end tests send texts through the real webhook (the Practice
rig of tests/test_webhooks.py): a phrase opts out with one confirmation; a possible
opt-out waits in `touchpoint inbox`, flagged and due in 10 business days, until staff
opt it out (`touchpoint inbox opt-out ID`) or mark it done.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.outcomes import Status
from engine.replies import OPT_OUT_FILE, POSSIBLE_OPT_OUT, classify, normalise, possible_opt_out
from engine.store.schema import inbound_messages
from tests.support import patient
from tests.test_webhooks import NUMBER, STAFF, STOP_TEXT, Practice

with OPT_OUT_FILE.open("rb") as _fh:
    _DATA = tomllib.load(_fh)
ENGLISH, SPANISH = _DATA["phrases"]["en"], _DATA["phrases"]["es"]
LISTS: dict[str, list[str]] = {"keywords": _DATA["keywords"], "phrases": ENGLISH + SPANISH,
                               "possible": _DATA["possible"], "fillers": _DATA["fillers"]}

ZERO_WIDTH = "\u200b"
FULL_WIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}  # ! … ~ → ！ … ～


def full_width(text: str) -> str:
    return "".join(FULL_WIDTH.get(c, c) for c in text)


def zero_width(text: str) -> str:
    """A zero-width space after the first letter (and a joiner after the last)."""
    return text[:1] + ZERO_WIDTH + text[1:] + "\u200d"


def is_stop(body: str) -> bool:
    return classify(body, opted_out_now=False) == "stop"


KEYWORD_VARIANTS = {
    "as-is": lambda k: k,
    "upper": str.upper,
    "emoji": lambda k: f"{k.upper()} 🛑",
    "brackets": lambda k: f"({k.upper()})",
    "ellipsis": lambda k: f"{k.capitalize()}…",
    "full-width": lambda k: full_width(k.upper()),
    "zero-width": lambda k: zero_width(k.upper()),
    "repeated": lambda k: f"{k} {k}!",
    "polite": lambda k: f"Please {k}, thanks",
}


@pytest.mark.parametrize("variant", list(KEYWORD_VARIANTS))
@pytest.mark.parametrize("keyword", LISTS["keywords"])
def test_each_keyword_in_each_variant_opts_out(keyword: str, variant: str) -> None:
    body = KEYWORD_VARIANTS[variant](keyword)
    assert is_stop(body), (body, normalise(body))


@pytest.mark.parametrize("phrase", LISTS["phrases"])
def test_each_phrase_opts_out_alone_after_other_words_and_in_capitals(phrase: str) -> None:
    for body in (phrase, f"{phrase.capitalize()}!", f"Hi, it's Ana. {phrase.upper()}.",
                 f"{phrase} por favor" if phrase.startswith("no ") else f"{phrase}, thank you",
                 zero_width(phrase)):
        assert is_stop(body), body


@pytest.mark.parametrize("phrase", LISTS["phrases"])
def test_a_phrase_with_more_after_it_is_a_possible_opt_out(phrase: str) -> None:
    longer = f"{phrase} at 7am on weekdays"
    assert not is_stop(longer) and possible_opt_out(longer)


@pytest.mark.parametrize("phrase", ENGLISH)
def test_an_english_phrase_that_may_be_negated_is_only_possible(phrase: str) -> None:
    said = (f"never {phrase}",) if phrase.startswith(("do ", "don")) else (
        f"please don't {phrase}", f"I don't want you to {phrase}")
    for negated in said:
        assert not is_stop(negated) and possible_opt_out(negated), negated


@pytest.mark.parametrize("phrase", [p for p in SPANISH if not p.startswith(("no ", "ya no"))])
def test_a_spanish_phrase_that_may_be_negated_is_only_possible(phrase: str) -> None:
    for negated in (f"no {phrase}", f"nunca {phrase}", f"no quiero que {phrase}"):
        assert not is_stop(negated) and possible_opt_out(negated), negated


def test_a_repeated_no_is_not_a_negation() -> None:
    assert is_stop("No, no me envíen más mensajes")
    assert is_stop("No. Stop texting me")


@pytest.mark.parametrize("entry", LISTS["possible"])
def test_each_possible_opt_out_goes_to_staff_and_does_not_opt_out(entry: str) -> None:
    for body in (entry, f"{entry.capitalize()}?", f"Sorry but {entry.upper()}!!"):
        assert classify(body, opted_out_now=False) == "other", body
        assert possible_opt_out(body), body


@pytest.mark.parametrize("filler", LISTS["fillers"])
def test_each_filler_around_a_keyword_or_after_a_phrase_changes_nothing(filler: str) -> None:
    assert is_stop(f"{filler} stop")
    assert is_stop(f"STOP {filler}")
    assert is_stop(f"no more texts {filler}")
    assert not is_stop(filler)


NEAR_MISSES = [
    "don't stop the exercises", "stop by tomorrow?", "Can I stop by tomorrow?",
    "I can't stop smiling, thank you!", "the exercises helped stop the pain",
    "cancel my appointment", "ended up ok", "stopp",
    "para el martes?", "baja la dosis?", "el dolor es alto", "end of the week works",
    "Will the reminders end after my last visit?", "ok", "thanks", "por favor",
]


@pytest.mark.parametrize("body", NEAR_MISSES)
def test_a_near_miss_does_not_opt_out_nor_flag(body: str) -> None:
    assert classify(body, opted_out_now=False) != "stop"
    assert not possible_opt_out(body)


def test_the_file_lists_each_entry_once_in_one_list_and_each_reads_as_words() -> None:
    seen: dict[str, str] = {}
    assert set(_DATA["phrases"]) == {"en", "es"}
    for name in ("keywords", "phrases", "possible", "fillers"):
        for entry in LISTS[name]:
            plain = normalise(entry)
            assert plain, (name, entry)
            assert plain not in seen, f"{entry!r} is in {seen.get(plain)} and {name}"
            seen[plain] = name
    # FCC 24-24 and CTIA: these always count, and the ones the issue names
    for word in ("stop", "quit", "end", "revoke", "opt out", "cancel", "unsubscribe",
                 "parar", "baja", "alto"):
        assert word in LISTS["keywords"]
    for phrase in ("please stop texting me", "no more texts", "remove me",
                   "no me envien mas mensajes"):
        assert phrase in LISTS["phrases"]


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def texting(database_url: str, tmp_path: Path) -> Iterator[Practice]:
    rig = Practice(database_url, tmp_path)
    yield rig
    rig.close()


@pytest.mark.parametrize("body", ["Please stop texting me", "No, no me envíen más mensajes",
                                  "ＳＴＯＰ 🛑"])
def test_a_clear_revocation_opts_out_at_once_with_one_confirmation(
        texting: Practice, body: str) -> None:
    texting.welcomed()
    assert texting.text_in(body, "SMrevoke1").status_code == 200
    assert texting.text_in("remove me", "SMrevoke2").status_code == 200  # said again
    assert texting.opt_outs() == {("sms", NUMBER, "all", "sms reply")}
    assert [(m.to, m.body) for m in texting.texts()[1:]] == [(NUMBER, STOP_TEXT)]
    assert [(r.intent, r.staff_status, r.flag) for r in texting.rows(inbound_messages)] == [
        ("stop", "", ""), ("stop", "", "")]


def test_a_possible_opt_out_waits_for_staff_flagged_and_due_in_ten_business_days(
        texting: Practice) -> None:
    texting.welcomed(patient("P1"))  # Monday 2 Nov 09:00 CST
    texting.at(datetime(2026, 11, 2, 15, 20, tzinfo=UTC))
    assert texting.text_in("You send too many messages", "SMmaybe").status_code == 200
    assert texting.text_in("Can I bring my dog?", "SMdog").status_code == 200

    assert texting.opt_outs() == set()
    assert texting.texts()[1:] == []  # no confirmation: nothing was opted out
    maybe, dog = texting.rows(inbound_messages)
    # ten business days (mon-fri) after Monday 2 Nov 09:20 CST: Monday 16 Nov 09:20 CST
    assert (maybe.intent, maybe.staff_status, maybe.flag, maybe.due_at) == (
        "other", "new", POSSIBLE_OPT_OUT, datetime(2026, 11, 16, 15, 20, tzinfo=UTC))
    assert (dog.flag, dog.due_at) == ("", None)

    alerts = {m.subject: m for m in texting.emails()}
    assert set(alerts) == {"Possible opt-out, by Mon, Nov 16: Ana Reyes",
                           "A patient replied: Ana Reyes"}
    flagged = alerts["Possible opt-out, by Mon, Nov 16: Ana Reyes"]
    assert flagged.to == STAFF
    assert 'flagged "possible opt-out"' in flagged.body
    assert "honoured by Monday, November 16 (10 business days)" in flagged.body
    assert "possible opt-out" not in alerts["A patient replied: Ana Reyes"].body

    listed = texting.cli("inbox")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "#2  Mon 02 Nov 09:20  P1 Ana Reyes  [other]",
        '      "Can I bring my dog?"',
        "#1  Mon 02 Nov 09:20  P1 Ana Reyes  [other, possible opt-out, due Mon 16 Nov 09:20]",
        '      "You send too many messages"']
    rows = json.loads(texting.cli("inbox", "--json").stdout)
    assert [(m["id"], m["flag"], m["due_at"]) for m in rows] == [
        (2, None, None), (1, "possible opt-out", "2026-11-16T15:20:00Z")]


def test_staff_opt_out_a_possible_opt_out_with_one_confirmation(texting: Practice) -> None:
    texting.welcomed()
    assert texting.text_in("too many messages!!", "SMmaybe").status_code == 200
    assert texting.opt_outs() == set()

    done = texting.cli("inbox", "opt-out", "1")
    assert done.exit_code == 0, done.output
    assert done.output == ("message 1 marked done; +1••••••••00 is opted out of every text; "
                           "the confirmation was sent.\n")
    assert texting.opt_outs() == {("sms", NUMBER, "all", "staff")}
    # (the command sends through its own channels: the ledger shows what went)
    [confirmation] = texting.clinic.touch_points(journey="replies")
    assert (confirmation.step, confirmation.status, confirmation.address,
            confirmation.content) == ("stop", Status.SENT, NUMBER, STOP_TEXT)
    [row] = texting.rows(inbound_messages)
    assert (row.staff_status, row.flag) == ("done", POSSIBLE_OPT_OUT)

    again = texting.cli("inbox", "opt-out", "1")  # twice: no second confirmation
    assert again.exit_code == 0, again.output
    assert "had already opted out of texts (no second confirmation)" in again.output
    assert len(texting.clinic.touch_points(journey="replies")) == 1
    missing = texting.cli("inbox", "opt-out", "7")
    assert missing.exit_code == 1 and "no text 7 in the inbox" in missing.output
    assert "Traceback" not in missing.output
