"""Journeys: what practice managers write in ``schedules/*.yaml``.

::

    version: 1
    journey: pre-visit
    purpose: transactional            # or marketing
    trigger: appointment.booked       # or {event: patient.lapsed, after: 30d}, or a list
    exit_on: [appointment.cancelled]  # pending steps are cancelled with that reason
    steps:
      - id: three-days-before
        when: {days_before: 3, at: "10:00"}   # calendar day, recipient's local time
        channels: [sms, email]                # first allowed and reachable wins
        template: pre-visit/three-days-before

A journey with several triggers (``trigger: [a, b]``) says on each step which one starts
it (``on: a``). ``recipient`` addresses the patient (the default: for a minor, their
guardians), their ``contacts``, both, or the patient's ``referrer``. ``once_per: 180d``
starts the journey at most once per patient in that period; ``asks: score`` marks the
step whose text asks the 0–10 question, so a reply to it is read as the answer.
``priority:`` (reminder, question, nudge, marketing, or a number from 0 to 100) says which
message waits when a limit on texts is reached (see :meth:`Journey.priority_of`).

Every problem is reported as a :class:`Diagnostic` with file, line and a fix; loading
never raises on bad input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)

from engine.definitions.diagnostics import Diagnostic, did_you_mean
from engine.timing import format_duration, parse_clock, parse_duration

Purpose = Literal["transactional", "marketing"]
WhenKind = Literal["immediately", "before", "after", "days_before", "days_after"]
Scope = Literal["anchor", "patient"]

CHANNELS = ("sms", "email")
# Touch points Touchpoint sends outside journeys (replies to texts, staff alerts, the
# monthly referral digest).
SYSTEM_JOURNEYS = ("replies", "staff-alerts", "referral-digest")
RECIPIENTS = ("patient", "contacts", "patient_and_contacts", "referrer")
TRIGGER_EVENTS = (
    "patient.created",
    "appointment.booked",
    "appointment.completed",
    "appointment.no_show",
    "appointment.cancelled",
    "patient.lapsed",
    "patient.discharged",  # the plan of care ended (discharged_on in patients.csv)
    "case.opened",  # a recovery case was opened
    "referral.first_visit_booked",  # a referred patient's first visit was booked
    "referral.first_visit_attended",  # ... they came to it
    "referral.first_visit_missed",  # ... they did not
    "plan.under_scheduled",  # fewer visits booked than the plan of care needs (daily)
    "waitlist.offered",  # a freed slot was offered to a waitlisted patient (data.anchor slot:ID)
)
EXIT_EVENTS = (
    "appointment.booked",
    "appointment.cancelled",
    "appointment.completed",
    "appointment.no_show",
    "appointment.rescheduled",
    "case.resolved",
)
ASKS = ("score",)
# Triggers that no longer exist, and why: a manager's old file gets the reason, not a
# bare "unknown trigger".
RETIRED_TRIGGERS = {
    "satisfaction.high": (
        "asking for reviews only after a high score is review gating (Google's review "
        "policy; FTC 16 CFR 465)",
        "ask every patient at a visit milestone: `trigger: [appointment.completed, "
        "patient.discharged]` with `only_if: \"appointment.visit_number == 6\"` (see "
        "schedules/review-request.yaml)"),
}
# A step's priority, by name: when a limit on texts is reached, the lower one waits.
PRIORITIES = {"reminder": 40, "question": 30, "nudge": 20, "marketing": 10}
MAX_PRIORITY = 100
# Events about an appointment that already exists: on a journey anchored on an
# appointment they end the run for *that* appointment only (a cancelled visit does not
# stop the reminders of another visit). A newly booked visit ends runs of any anchor.
_ANCHOR_EVENTS = {"appointment.cancelled", "appointment.completed", "appointment.no_show",
                  "appointment.rescheduled"}

# A journey file is a page of YAML. Larger files, and aliases (``*name``) that would
# expand to more values than that (a "billion laughs" file), are refused before loading.
MAX_FILE_BYTES = 256 * 1024
MAX_VALUES = 10_000
# The ledger keeps journey names and step ids this long (engine/store/schema.py sizes
# touch_points.journey and .step from it).
NAME_LENGTH = 64
# How far a step, an expiry, a lapse or once_per may reach from its anchor: beyond that,
# a date moved by it could leave the calendar, and planning would fail.
LONGEST = timedelta(days=3650)

_TOP_KEYS = ("version", "journey", "description", "purpose", "trigger", "exit_on", "once_per",
             "steps")
_STEP_KEYS = ("id", "on", "when", "channels", "template", "catch_up", "expires_after",
              "exit_on", "only_if", "recipient", "asks", "priority", "description")
_WHEN_KEYS = ("immediately", "before", "after", "days_before", "days_after", "at")


@dataclass(frozen=True)
class When:
    kind: WhenKind
    offset: timedelta = timedelta(0)
    days: int = 0
    at: time | None = None

    @property
    def before_anchor(self) -> bool:
        return self.kind in ("before", "days_before")

    def describe(self) -> str:
        if self.kind == "immediately":
            return "immediately"
        if self.kind in ("before", "after"):
            return f"{format_duration(self.offset)} {self.kind}"
        at = f" at {self.at:%H:%M}" if self.at else ""
        direction = "before" if self.kind == "days_before" else "after"
        return f"{self.days} day{'s' if self.days != 1 else ''} {direction}{at}"


@dataclass(frozen=True)
class Trigger:
    event: str
    after: timedelta | None = None

    def describe(self) -> str:
        return f"{self.event} after {format_duration(self.after)}" if self.after else self.event


@dataclass(frozen=True)
class ExitRule:
    event: str
    scope: Scope


@dataclass(frozen=True)
class Step:
    id: str
    when: When
    channels: tuple[str, ...]
    template: str
    line: int
    catch_up: bool = False
    expires_after: timedelta | None = None
    exit_on: tuple[ExitRule, ...] | None = None  # None: the journey's exit_on applies
    only_if: str | None = None
    # None: the patient, or a minor's guardians (see engine.recipients)
    recipient: str | None = None
    on: str | None = None  # which of the journey's triggers starts it (None: the only one)
    asks: str | None = None  # "score": a reply to it answers the 0-10 question
    priority: int | None = None  # None: by kind (see Journey.priority_of)

    def fingerprint(self) -> str:
        """Changes when anything that decides timing or content of this step changes."""
        # (parts added later only count when set, so upgrading keeps existing fingerprints)
        extra = (self.on,) if self.on else ()
        return _fingerprint(self.when, self.channels, self.template, self.catch_up,
                            self.expires_after, self.only_if, self.recipient or "patient",
                            *extra)


@lru_cache(maxsize=1024)
def _fingerprint(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Journey:
    name: str
    purpose: Purpose
    triggers: tuple[Trigger, ...]
    exit_on: tuple[ExitRule, ...]
    steps: tuple[Step, ...]
    file: str
    description: str = ""
    line: int = 1  # of the `journey:` key
    once_per: timedelta | None = None  # start at most once per patient in this period
    _steps_by_id: Mapping[str, Step] = field(default_factory=dict, repr=False, compare=False)
    # what the planner asks of every event, worked out once
    _starts_on: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _exits_on: Mapping[str, tuple[tuple[Scope, tuple[str, ...]], ...]] = field(
        default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_steps_by_id", {s.id: s for s in self.steps})
        kinds = {t.event for t in self.triggers}
        if "appointment.booked" in kinds:
            kinds.add("appointment.rescheduled")  # a move re-plans the booking's steps
        object.__setattr__(self, "_starts_on", frozenset(kinds))
        exits: dict[str, dict[Scope, list[str]]] = {}
        for step in self.steps:
            for rule in self.exits_for(step):
                exits.setdefault(rule.event, {}).setdefault(rule.scope, []).append(step.id)
        object.__setattr__(self, "_exits_on", {
            kind: tuple((scope, tuple(ids)) for scope, ids in scopes.items())
            for kind, scopes in exits.items()})

    def may_start_on(self, kind: str) -> bool:
        """Whether an event of ``kind`` can start any of this journey's steps."""
        return kind in self._starts_on

    def exits_on(self, kind: str) -> tuple[tuple[Scope, tuple[str, ...]], ...]:
        """(scope, step ids) that an event of ``kind`` ends, by exit rule scope."""
        return self._exits_on.get(kind, ())

    @property
    def trigger(self) -> Trigger:
        """The first (usually the only) trigger."""
        return self.triggers[0]

    def trigger_for(self, step: Step) -> Trigger:
        """The trigger that starts ``step``."""
        if step.on is not None:
            for trigger in self.triggers:
                if trigger.event == step.on:
                    return trigger
        return self.triggers[0]

    @property
    def anchored_on_appointment(self) -> bool:
        """Every trigger is about an appointment (its steps follow that appointment)."""
        return all(t.event.startswith("appointment.") for t in self.triggers)

    def step_anchored_on_appointment(self, step: Step) -> bool:
        return self.trigger_for(step).event.startswith("appointment.")

    def step(self, step_id: str) -> Step | None:
        return self._steps_by_id.get(step_id)

    def exits_for(self, step: Step) -> tuple[ExitRule, ...]:
        return step.exit_on if step.exit_on is not None else self.exit_on

    def priority_of(self, step: Step) -> int:
        """The step's ``priority:``, or by kind: a marketing journey's step is marketing, a
        step timed before its appointment a reminder, one that asks the 0-10 question a
        question, any other a nudge."""
        if step.priority is not None:
            return step.priority
        if self.purpose == "marketing":
            return PRIORITIES["marketing"]
        if step.when.before_anchor:
            return PRIORITIES["reminder"]
        if step.asks == "score":
            return PRIORITIES["question"]
        return PRIORITIES["nudge"]


# --------------------------------------------------------------------------- loading


def load_journeys(directory: Path) -> tuple[dict[str, Journey], list[Diagnostic]]:
    """Every ``*.yaml`` / ``*.yml`` in ``directory``; invalid files are left out and reported."""
    diagnostics: list[Diagnostic] = []
    journeys: dict[str, Journey] = {}
    if not directory.is_dir():
        diagnostics.append(Diagnostic(str(directory), None, "schedules folder not found",
                                      "create it or point --schedules / paths.schedules at it"))
        return journeys, diagnostics
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in files:
        journey, found = parse_journey_file(path)
        diagnostics.extend(found)
        if journey is None:
            continue
        if journey.name in journeys:
            diagnostics.append(Diagnostic(
                journey.file, journey.line, f"journey '{journey.name}' is already defined in "
                f"{journeys[journey.name].file}", "give each journey a unique name"))
            continue
        journeys[journey.name] = journey
    return journeys, diagnostics


def parse_journey_file(path: Path) -> tuple[Journey | None, list[Diagnostic]]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, [Diagnostic(str(path), None, f"the file is {size // 1024:,} KB; a "
                                     f"journey file may be at most {MAX_FILE_BYTES // 1024} KB",
                                     "keep one journey per file, with its steps only",
                                     code="too-large")]
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark is read as nothing)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Diagnostic(str(path), None, f"cannot read the file: {exc}",
                                 "save it as UTF-8 text")]
    return parse_journey(text, str(path))


def parse_journey(text: str, file: str) -> tuple[Journey | None, list[Diagnostic]]:
    yaml = YAML(typ="rt")
    try:
        too_big = _too_many_values(yaml, text)
        if too_big is not None:
            return None, [Diagnostic(file, too_big, f"the aliases (*name) here would expand "
                                     f"the file to more than {MAX_VALUES:,} values",
                                     "write the values out, or use fewer aliases",
                                     code="yaml-aliases")]
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        # "found unexpected end of stream" points at the end of the file; the context
        # mark ("while scanning a quoted scalar") is where the unclosed quote opened.
        at_end = "end of stream" in (exc.problem or "")
        mark = (exc.context_mark or exc.problem_mark) if at_end else \
            (exc.problem_mark or exc.context_mark)
        line = mark.line + 1 if mark is not None else None
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        return None, [Diagnostic(file, line, f"YAML syntax error: {problem}",
                                 "check indentation, colons and quotes on this line and the one "
                                 "above", code="yaml")]
    except YAMLError as exc:
        return None, [Diagnostic(file, None, f"YAML syntax error: {exc}", "fix the YAML syntax",
                                 code="yaml")]
    return _JourneyReader(file).read(data)


def _too_many_values(yaml: YAML, text: str) -> int | None:
    """The 1-based line where the file, with every alias expanded, passes MAX_VALUES
    values; None if it never does. Reads the event stream only: nothing is expanded."""
    total = 0
    sizes: dict[str, int] = {}  # anchor → values under it, expanded
    opened: list[tuple[str | None, int]] = []  # (anchor, total when it opened)
    for event in yaml.parse(text):
        if isinstance(event, AliasEvent):
            total += sizes.get(str(event.anchor), 1)
        elif isinstance(event, CollectionStartEvent):
            opened.append((event.anchor, total))
            total += 1
        elif isinstance(event, CollectionEndEvent):
            anchor, start = opened.pop()
            if anchor is not None:
                sizes[str(anchor)] = total - start
        elif isinstance(event, NodeEvent):  # a scalar
            total += 1
            if event.anchor is not None:
                sizes[str(event.anchor)] = 1
        if total > MAX_VALUES:
            return int(event.start_mark.line) + 1
    return None


class _JourneyReader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.diagnostics: list[Diagnostic] = []

    def error(self, line: int | None, message: str, fix: str = "", code: str = "") -> None:
        if not fix and " — " in message:
            message, fix = message.split(" — ", 1)
        self.diagnostics.append(Diagnostic(self.file, line, message, fix, code=code))

    # ruamel keeps 0-based positions on every mapping and sequence
    @staticmethod
    def key_line(node: Any, key: str) -> int | None:
        if isinstance(node, CommentedMap) and key in node:
            return int(node.lc.key(key)[0]) + 1
        return _node_line(node)

    @staticmethod
    def item_line(node: Any, index: int) -> int | None:
        if isinstance(node, CommentedSeq) and index < len(node):
            return int(node.lc.item(index)[0]) + 1
        return _node_line(node)

    def unknown_keys(self, node: CommentedMap, allowed: Sequence[str], where: str) -> None:
        for key in node:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed, f"allowed keys: {', '.join(allowed)}")
                self.error(self.key_line(node, key), f"unknown key '{key}' {where}", hint,
                           code="unknown-key")

    def read(self, data: Any) -> tuple[Journey | None, list[Diagnostic]]:
        if not isinstance(data, CommentedMap):
            self.error(1, "a journey file must be a mapping of keys (version, journey, purpose, "
                       "trigger, steps)", "start from one of the shipped files in schedules/")
            return None, self.diagnostics
        self.unknown_keys(data, _TOP_KEYS, "at the top level")
        version = data.get("version")
        if version != 1:
            self.error(self.key_line(data, "version"),
                       f"version must be 1, not {version!r}" if "version" in data
                       else "missing 'version'", "write `version: 1` on the first line")
        name = data.get("journey")
        if not isinstance(name, str) or not name.strip():
            self.error(self.key_line(data, "journey"), "missing journey name",
                       "add `journey: NAME`, e.g. `journey: pre-visit`")
            name = None
        elif len(name.strip()) > NAME_LENGTH:
            self.error(self.key_line(data, "journey"), f"the journey name is "
                       f"{len(name.strip())} characters long; Touchpoint keeps at most "
                       f"{NAME_LENGTH}", "shorten it")
            name = None
        elif name.strip() in SYSTEM_JOURNEYS:
            self.error(self.key_line(data, "journey"), f"the journey name '{name}' is reserved "
                       "(Touchpoint uses it for replies and staff alerts)",
                       "choose another name")
            name = None
        purpose = data.get("purpose", "transactional")
        if purpose not in ("transactional", "marketing"):
            self.error(self.key_line(data, "purpose"),
                       f"purpose must be transactional or marketing, not {purpose!r}",
                       did_you_mean(str(purpose), ("transactional", "marketing"),
                                    "marketing needs marketing consent; reminders are "
                                    "transactional"))
        triggers = self.read_triggers(data)
        # exit scopes default from the triggers: "anchor" only if every one has an appointment
        scope_trigger = next((t for t in triggers if not t.event.startswith("appointment.")),
                             triggers[0] if triggers else None)
        exits = self.read_exits(data, "exit_on", scope_trigger) if "exit_on" in data else ()
        once_per: timedelta | None = None
        if "once_per" in data:
            try:
                once_per = _duration(data["once_per"])
            except ValueError as exc:
                self.error(self.key_line(data, "once_per"), f"once_per: {exc}")
        steps = self.read_steps(data, triggers)
        if self.diagnostics or name is None or not triggers or exits is None:
            return None, self.diagnostics
        return Journey(
            name=name.strip(),
            purpose=purpose,
            triggers=triggers,
            exit_on=exits,
            steps=tuple(steps),
            file=self.file,
            description=str(data.get("description") or ""),
            line=self.key_line(data, "journey") or 1,
            once_per=once_per,
        ), self.diagnostics

    def read_triggers(self, data: CommentedMap) -> tuple[Trigger, ...]:
        raw = data.get("trigger")
        if not isinstance(raw, list):
            trigger = self.read_trigger(data.get("trigger"), self.key_line(data, "trigger"))
            return (trigger,) if trigger is not None else ()
        if not raw:
            self.error(self.key_line(data, "trigger"), "trigger is an empty list",
                       "list at least one event, e.g. `trigger: [appointment.booked]`")
            return ()
        triggers: list[Trigger] = []
        for index, item in enumerate(raw):
            line = self.item_line(raw, index)
            trigger = self.read_trigger(item, line)
            if trigger is None:
                continue
            if any(t.event == trigger.event for t in triggers):
                self.error(line, f"trigger {trigger.event} is listed twice",
                           "list each event once")
                continue
            triggers.append(trigger)
        return tuple(triggers) if len(triggers) == len(raw) else ()

    def read_trigger(self, raw: Any, line: int | None) -> Trigger | None:
        if raw is None:
            self.error(line, "missing 'trigger'", f"add e.g. `trigger: appointment.booked` "
                       f"(one of {', '.join(TRIGGER_EVENTS)})")
            return None
        after: timedelta | None = None
        if isinstance(raw, CommentedMap):
            self.unknown_keys(raw, ("event", "after"), "in trigger")
            event = raw.get("event")
            if "after" in raw:
                try:
                    after = _duration(raw["after"])
                except ValueError as exc:
                    self.error(self.key_line(raw, "after"), f"trigger after: {exc}")
                    return None
        else:
            event = raw
        if isinstance(event, str) and event in RETIRED_TRIGGERS:
            why, fix = RETIRED_TRIGGERS[event]
            self.error(line, f"trigger {event} is no longer allowed: {why}", fix,
                       code="trigger")
            return None
        if event not in TRIGGER_EVENTS:
            self.error(line, f"unknown trigger event {event!r}",
                       did_you_mean(str(event), TRIGGER_EVENTS,
                                    f"use one of {', '.join(TRIGGER_EVENTS)}"), code="trigger")
            return None
        if event == "patient.lapsed" and after is None:
            self.error(line, "patient.lapsed needs to know how long without a visit",
                       "write `trigger: {event: patient.lapsed, after: 30d}`")
            return None
        if event != "patient.lapsed" and after is not None:
            self.error(line, f"'after' only applies to patient.lapsed, not {event}",
                       "remove 'after' or time the steps with `when`")
            return None
        return Trigger(str(event), after)

    def read_exits(self, node: CommentedMap, key: str,
                   trigger: Trigger | None) -> tuple[ExitRule, ...] | None:
        raw = node.get(key)
        line = self.key_line(node, key)
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.error(line, f"{key} must be a list of events",
                       "write e.g. `exit_on: [appointment.cancelled]`")
            return None
        rules: list[ExitRule] = []
        for index, item in enumerate(raw):
            item_line = self.item_line(raw, index)
            scope: str | None = None
            if isinstance(item, CommentedMap):
                self.unknown_keys(item, ("event", "scope"), f"in {key}")
                event, scope = item.get("event"), item.get("scope")
            else:
                event = item
            if event not in EXIT_EVENTS:
                self.error(item_line, f"unknown exit event {event!r}",
                           did_you_mean(str(event), EXIT_EVENTS,
                                        f"use one of {', '.join(EXIT_EVENTS)}"), code="exit")
                continue
            if scope is None:
                anchored = trigger is not None and trigger.event.startswith("appointment.")
                scope = "anchor" if anchored and event in _ANCHOR_EVENTS else "patient"
            if scope not in ("anchor", "patient"):
                self.error(item_line, f"scope must be anchor or patient, not {scope!r}",
                           "anchor: only the appointment the journey started from; patient: any")
                continue
            if scope == "anchor" and trigger is not None \
                    and not trigger.event.startswith("appointment."):
                self.error(item_line, f"scope: anchor, but {trigger.event} has no appointment "
                           "to anchor on", "use scope: patient, or leave scope out")
                continue
            rules.append(ExitRule(str(event), scope))  # type: ignore[arg-type]
        return tuple(rules)

    def read_steps(self, data: CommentedMap, triggers: tuple[Trigger, ...]) -> list[Step]:
        raw = data.get("steps")
        if not isinstance(raw, list) or not raw:
            self.error(self.key_line(data, "steps"), "a journey needs at least one step",
                       "add `steps:` with items that have id, when, channels and template")
            return []
        steps: list[Step] = []
        seen: dict[str, int | None] = {}
        for index, item in enumerate(raw):
            line = self.item_line(raw, index) or 1
            if not isinstance(item, CommentedMap):
                self.error(line, "each step must be a mapping with id, when, channels, template")
                continue
            step = self.read_step(item, line, triggers)
            if step is None:
                continue
            if step.id in seen:
                self.error(self.key_line(item, "id"), f"duplicate step id '{step.id}' "
                           f"(first at line {seen[step.id]})", "give each step a unique id",
                           code="duplicate-step")
                continue
            seen[step.id] = self.key_line(item, "id")
            steps.append(step)
        return steps

    def read_step(self, item: CommentedMap, line: int,
                  triggers: tuple[Trigger, ...]) -> Step | None:
        before = len(self.diagnostics)
        self.unknown_keys(item, _STEP_KEYS, f"in step '{item.get('id', '?')}'")
        step_id = item.get("id")
        if not isinstance(step_id, str) or not step_id.strip():
            self.error(line, "a step needs an id", "add `id: some-name` (letters, digits, dashes)")
            step_id = "?"
        elif len(step_id.strip()) > NAME_LENGTH:
            self.error(self.key_line(item, "id"), f"the step id is {len(step_id.strip())} "
                       f"characters long; Touchpoint keeps at most {NAME_LENGTH}", "shorten it")
        on = item.get("on")
        trigger: Trigger | None = triggers[0] if len(triggers) == 1 else None
        names = [t.event for t in triggers]
        if on is not None:
            match = [t for t in triggers if t.event == on]
            if match:
                trigger = match[0]
            elif triggers:
                self.error(self.key_line(item, "on"), f"on: {on!r} is not one of this "
                           f"journey's triggers ({', '.join(names)})",
                           did_you_mean(str(on), names, "add it to `trigger:` or fix the name"))
        elif len(triggers) > 1:
            self.error(line, f"step '{step_id}' does not say which trigger starts it",
                       f"add `on:` with one of {', '.join(names)}")
        when = self.read_when(item, trigger)
        channels = item.get("channels")
        if isinstance(channels, str):
            self.error(self.key_line(item, "channels"), "channels must be a list",
                       f"write e.g. `channels: [{channels}]`")
        elif (not isinstance(channels, list) or not channels
                or any(c not in CHANNELS for c in channels)):
            bad = [c for c in channels or [] if c not in CHANNELS] if isinstance(channels, list) \
                else [channels]
            hint = did_you_mean(str(bad[0]), CHANNELS, "") if bad else ""
            self.error(self.key_line(item, "channels"),
                       f"channels must be a list of {' and/or '.join(CHANNELS)}"
                       + (f", not {bad[0]!r}" if bad and bad[0] is not None else ""),
                       hint or "write e.g. `channels: [sms, email]`")
        elif len(set(channels)) != len(channels):
            self.error(self.key_line(item, "channels"), "a channel is listed twice",
                       "list each channel once, in the order to try them")
        template = item.get("template")
        if not isinstance(template, str) or not template.strip():
            self.error(self.key_line(item, "template"), "a step needs a template",
                       "add e.g. `template: pre-visit/three-days-before` (a path under "
                       "message_templates/, without extension)")
        elif template.strip().endswith((".j2", ".sms", ".email")):
            self.error(self.key_line(item, "template"),
                       f"template names the file with its extension ({template})",
                       f"write `template: {template.split('.')[0]}`: the channel and "
                       "language pick the file")
        catch_up = item.get("catch_up", False)
        if not isinstance(catch_up, bool):
            self.error(self.key_line(item, "catch_up"), "catch_up must be true or false")
        expires: timedelta | None = None
        if "expires_after" in item:
            try:
                expires = _duration(item["expires_after"])
            except ValueError as exc:
                self.error(self.key_line(item, "expires_after"), str(exc))
        exits = self.read_exits(item, "exit_on", trigger) if "exit_on" in item else None
        only_if = item.get("only_if")
        if only_if is not None and not isinstance(only_if, str):
            self.error(self.key_line(item, "only_if"), "only_if must be an expression in quotes",
                       "write e.g. `only_if: \"appointment.visit_number == 3\"`")
        recipient = item.get("recipient")
        if recipient is not None and recipient not in RECIPIENTS:
            self.error(self.key_line(item, "recipient"), f"unknown recipient {recipient!r}",
                       did_you_mean(str(recipient), RECIPIENTS,
                                    f"use one of {', '.join(RECIPIENTS)}"))
        elif recipient == "referrer" and isinstance(channels, list) and "sms" in channels:
            self.error(self.key_line(item, "channels"), "a referrer is reached by email only",
                       "write `channels: [email]` for a step with `recipient: referrer`")
        asks = item.get("asks")
        if asks is not None and asks not in ASKS:
            self.error(self.key_line(item, "asks"), f"asks must be one of {', '.join(ASKS)}, "
                       f"not {asks!r}", "write `asks: score` on the step that asks the 0-10 "
                       "question")
        elif asks is not None and isinstance(channels, list) and "sms" not in channels:
            self.error(self.key_line(item, "asks"), "asks: score reads text replies, but the "
                       "step sends no SMS", "add sms to channels, or remove asks")
        priority = self.read_priority(item)
        if len(self.diagnostics) > before or when is None:
            return None
        return Step(
            id=step_id.strip(),
            when=when,
            channels=tuple(channels),
            template=template.strip(),
            line=line,
            catch_up=catch_up,
            expires_after=expires,
            exit_on=exits,
            only_if=only_if,
            recipient=recipient,
            on=trigger.event if on is not None and trigger is not None else None,
            asks=asks,
            priority=priority,
        )

    def read_priority(self, item: CommentedMap) -> int | None:
        if "priority" not in item:
            return None
        raw = item["priority"]
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= MAX_PRIORITY:
            return raw
        if isinstance(raw, str) and raw.strip() in PRIORITIES:
            return PRIORITIES[raw.strip()]
        names = ", ".join(PRIORITIES)
        self.error(self.key_line(item, "priority"),
                   f"priority must be one of {names} or a number from 0 to {MAX_PRIORITY}, "
                   f"not {raw!r}",
                   did_you_mean(str(raw), tuple(PRIORITIES),
                                f"write e.g. `priority: reminder` (highest) — {names} are "
                                + ", ".join(str(v) for v in PRIORITIES.values())),
                   code="priority")
        return None

    def read_when(self, item: CommentedMap, trigger: Trigger | None) -> When | None:
        line = self.key_line(item, "when")
        raw = item.get("when")
        forms = ("write one of: immediately, {before: 2h}, {after: 90m}, "
                 "{days_before: 2, at: \"10:00\"}, {days_after: 1, at: \"18:00\"}")
        if raw is None:
            self.error(line, "a step needs `when`", forms)
            return None
        if raw == "immediately":
            return When("immediately")
        if not isinstance(raw, CommentedMap):
            self.error(line, f"cannot read when: {raw!r}", forms)
            return None
        self.unknown_keys(raw, _WHEN_KEYS, "in when")
        kinds = [k for k in ("immediately", "before", "after", "days_before", "days_after")
                 if k in raw]
        if len(kinds) != 1:
            self.error(line, "when needs exactly one of immediately, before, after, "
                       "days_before, days_after", forms)
            return None
        kind: WhenKind = kinds[0]  # type: ignore[assignment]
        when: When | None = None
        try:
            if kind == "immediately":
                when = When("immediately")
            elif kind in ("before", "after"):
                if "at" in raw:
                    raise ValueError(f"'at' goes with days_{kind}, not {kind} — write "
                                     f"{{days_{kind}: 1, at: \"10:00\"}}")
                when = When(kind, offset=_duration(raw[kind]))
            else:
                days = raw[kind]
                if not isinstance(days, int) or isinstance(days, bool) or days < 0:
                    raise ValueError(f"{kind} must be a whole number of days — write e.g. "
                                     f"{kind}: 2")
                if days > LONGEST.days:
                    raise ValueError(f"{kind} {days} is more than {LONGEST.days} days (ten "
                                     f"years) — write at most {kind}: {LONGEST.days}")
                if "at" not in raw:
                    raise ValueError(f"{kind} needs a local time — write {{{kind}: {days}, "
                                     f"at: \"10:00\"}}")
                when = When(kind, days=days, at=parse_clock(raw["at"]))
        except ValueError as exc:
            self.error(line, f"when: {exc}")
            return None
        if when.before_anchor and trigger is not None \
                and trigger.event != "appointment.booked":
            self.error(line, f"'{kind}' needs an upcoming appointment, but {trigger.event} "
                       "has none",
                       "time the step with after/days_after, or trigger on appointment.booked")
            return None
        return when


def _duration(raw: Any) -> timedelta:
    """:func:`parse_duration`, refusing a duration longer than :data:`LONGEST`."""
    try:
        value = parse_duration(raw)
    except OverflowError:  # more days than a timedelta holds
        value = None
    if value is None or value > LONGEST:
        raise ValueError(f"{raw!r} is more than ten years — write at most "
                         f"{format_duration(LONGEST)}")
    return value


def _node_line(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    return int(lc.line) + 1 if lc is not None and lc.line is not None else None


def iter_steps(journeys: Mapping[str, Journey]) -> Iterator[tuple[Journey, Step]]:
    for journey in journeys.values():
        for step in journey.steps:
            yield journey, step
