"""Message templates: ``message_templates/<journey>/<step>[.<lang>].<channel>.j2``.

* ``<step>.sms.j2`` is the SMS body.
* ``<step>.email.j2`` defines blocks ``subject`` and ``text`` and, optionally, ``html``.
* ``<step>.es.sms.j2`` is the Spanish variant; a recipient whose language has no variant
  gets the default file (``es-MX`` tries ``es-MX``, then ``es``, then the default).

Templates run in Jinja's sandbox with ``StrictUndefined``: a misspelt variable is an
error, never an empty string in a patient's message. In an SMS, a value that would force
the whole text into UCS-2 — "Lucía" — is written with its GSM-7 stand-in ("Lucia") when
that makes the text fewer segments; the template's own words are never changed
(`touchpoint validate` points at those). Dates and times format in the
recipient's timezone and language: ``{{ appointment.start | date }}`` → "Tuesday,
November 24" or "martes, 24 de noviembre"; ``| time`` → "3:00 PM" or "15:00".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_skeleton, format_time
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
    pass_context,
)
from jinja2.runtime import Context

from engine.definitions.diagnostics import Diagnostic, did_you_mean
from engine.definitions.render_limits import LimitedSandbox, limits, stream
from engine.errors import TemplateRenderError
from engine.sms_segments import NonGsmCharacter, analyse, is_gsm7, to_gsm7

# What templates can use. ``custom`` (patient) and ``links`` (practice) are open tables.
FIELDS: dict[str, tuple[str, ...]] = {
    # booking_link: the patient's booking page (the EMR's, or the practice's with a signed
    # token); intake_link: the intake form until intake is complete (both may be empty)
    "patient": ("id", "first_name", "last_name", "full_name", "language", "timezone", "custom",
                "discharged_on", "booking_link", "intake_link"),
    "appointment": ("id", "start", "end", "duration_minutes", "visit_type", "therapist",
                    "location", "status", "visit_number", "confirmed"),
    "practice": ("name", "phone", "phone_e164", "address", "website", "timezone", "links",
                 "visit_price"),
    # who this message addresses: role is patient, parent, guardian, spouse, caregiver,
    # referrer, …; is_patient tells "your visit" from "Sam's visit"
    "recipient": ("role", "first_name", "last_name", "name", "is_patient", "language",
                  "timezone"),
    "touch_point": ("id", "journey", "step"),
    # in replies/ and staff/ templates; flag: "possible opt-out" (or empty), due_at: when
    # staff must have handled a flagged one
    "reply": ("body", "from", "received_at", "flag", "due_at"),
    # a recovery case (the recovery journey, staff/recovery-* alerts)
    "case": ("id", "cause", "reason", "detail", "owner", "status", "opened_at", "due_at",
             "command", "score"),
    "referrer": ("name", "contact_name"),  # the patient's referral source
    # a freed slot offered from the waitlist (waitlist/ templates, staff/slot-claimed):
    # expires_at is when this patient's offer ends
    "slot": ("id", "start", "end", "duration_minutes", "therapist", "location", "visit_type",
             "status", "expires_at"),
    # the monthly referral digest (referrals/monthly-digest)
    "digest": ("month", "referred", "seen", "discharged", "patients"),
}
OPEN_TABLES = {("patient", "custom"), ("practice", "links")}
EMAIL_BLOCKS = ("subject", "text", "html")
# Files are UTF-8; a byte-order mark (Windows Notepad saves one) is read as nothing, never
# as an invisible character at the start of a patient's message.
ENCODING = "utf-8-sig"
_SUFFIX = re.compile(r"^(?P<step>[^.]+)(?:\.(?P<lang>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?))?"
                     r"\.(?P<channel>sms|email)\.j2$")


class Fields:
    """A read-only bag of attributes for templates (``patient.first_name``).

    ``label`` names it in error messages ("patient has no field 'frist_name'").
    """

    __slots__ = ("_label", "_values")

    def __init__(self, values: Mapping[str, Any], label: str = "") -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_label", label)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Fields({', '.join(self._values)})"


class _Undefined(StrictUndefined):
    """StrictUndefined with messages in the template's own words."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        owner, name = self._undefined_obj, self._undefined_name
        if isinstance(owner, Fields) and owner._label and name is not None:
            return f"{owner._label} has no field '{name}'"
        if owner is None and name is not None:
            return (f"'{name}' of an empty value — is appointment empty here? Wrap it in "
                    "{% if appointment %}…{% endif %}")
        return str(super()._undefined_message)


@dataclass(frozen=True)
class Rendered:
    channel: str
    body: str  # the SMS body, or the email's plain text
    subject: str | None = None
    html: str | None = None
    template_file: str = ""
    language: str = ""


# --------------------------------------------------------------------------- filters


# CLDR formats use narrow and non-breaking spaces ("3:00\u202fPM"); either one would force
# an SMS into UCS-2 (70 characters a segment instead of 160). Dates use plain spaces.
_PLAIN_SPACES = str.maketrans({"\u202f": " ", "\u00a0": " ", "\u2009": " "})


def _plain(text: str, context: Context | None = None) -> str:
    """Formatted dates as plain text; in an SMS, folded to GSM-7 ("sáb" → "sab") so a
    weekday name never pushes a message into UCS-2."""
    text = text.translate(_PLAIN_SPACES)
    if context is not None and context.get("_channel") == "sms":
        return to_gsm7(text)
    return text


def _zone_and_locale(context: Context) -> tuple[ZoneInfo, str]:
    return context.get("_zone"), context.get("_locale", "en")


def _as_instant(value: object) -> datetime:
    if isinstance(value, Undefined):
        raise TemplateRenderError(f"a date filter got no value: {value._undefined_message}")
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TemplateRenderError("date filters (date, time, …) work on dates and times such as "
                                  "appointment.start, not on text or numbers")
    return value


def _as_day(value: object, tz: ZoneInfo) -> datetime:
    """A calendar day (``patient.discharged_on``) as its local noon, or an instant made
    local: what the date filters format."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time(12, 0))
    return _as_instant(value).astimezone(tz)


@pass_context
def _date(context: Context, value: object) -> str:
    """Tuesday, November 24 — martes, 24 de noviembre."""
    tz, locale = _zone_and_locale(context)
    instant = _as_day(value, tz)
    return _plain(f"{format_date(instant, 'EEEE', locale=locale)}, "
                  f"{format_skeleton('MMMMd', instant, locale=locale)}", context)


@pass_context
def _short_date(context: Context, value: object) -> str:
    """Tue, Nov 24 — mar, 24 nov."""
    tz, locale = _zone_and_locale(context)
    return _plain(format_skeleton("MMMEd", _as_day(value, tz), locale=locale), context)


@pass_context
def _weekday(context: Context, value: object) -> str:
    tz, locale = _zone_and_locale(context)
    return _plain(format_date(_as_instant(value).astimezone(tz), "EEEE", locale=locale),
                  context)


@pass_context
def _time(context: Context, value: object) -> str:
    """3:00 PM — 15:00."""
    tz, locale = _zone_and_locale(context)
    return _plain(format_time(_as_instant(value).astimezone(tz), "short", locale=locale),
                  context)


@pass_context
def _datetime(context: Context, value: object) -> str:
    return f"{_date(context, value)}, {_time(context, value)}"


def format_phone(value: object) -> str:
    """+15035550100 → (503) 555-0100."""
    try:
        number = phonenumbers.parse(str(value), None)
    except phonenumbers.NumberParseException:
        return str(value)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))


# What each date filter shows of a date or time: its day, its time of day, or both.
MOMENT_FILTERS: dict[str, tuple[str, ...]] = {
    "date": ("date",), "short_date": ("date",), "weekday": ("date",), "time": ("time",),
    "datetime": ("date", "time"),
}

FILTERS: dict[str, Callable[..., Any]] = {
    "date": _date,
    "short_date": _short_date,
    "weekday": _weekday,
    "time": _time,
    "datetime": _datetime,
    "phone": format_phone,
}


def _folded(value: Any) -> Any:
    """A ``{{ }}`` value folded to GSM-7 (the SMS environment that saves segments)."""
    return to_gsm7(value) if isinstance(value, str) else value


def _environment(directory: Path, autoescape: bool,
                 finalize: Callable[[Any], Any] | None = None) -> LimitedSandbox:
    env = _Sandbox(
        loader=FileSystemLoader(str(directory), encoding=ENCODING),
        undefined=_Undefined,
        finalize=finalize,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=2000,
    )
    env.add_filters(FILTERS)
    return env


def language_candidates(language: str | None) -> list[str]:
    """``es-MX`` → ``["es-MX", "es"]``; ``None`` → ``[]``."""
    if not language:
        return []
    normalised = language.replace("_", "-")
    base = normalised.split("-")[0].lower()
    return [normalised, base] if normalised.lower() != base else [base]


@lru_cache(maxsize=256)
def locale_for(language: str) -> str:
    try:
        return str(Locale.parse(language.replace("-", "_")))
    except (UnknownLocaleError, ValueError):
        return "en"


class _Sandbox(LimitedSandbox):
    """The sandbox (with :mod:`~engine.definitions.render_limits`), with a fast path for
    what templates read most: a :class:`Fields` value by its public name (it holds plain
    data; nothing on it can be called)."""

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        # A plain dict, not Jinja's ChainMap over the environment's globals: every render
        # copies the globals, and copying a ChainMap costs more than the render. (Nothing
        # changes the globals after templates load, as Jinja asks.)
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is Fields and not attribute.startswith("_"):
            try:
                return obj._values[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


# --------------------------------------------------------------------------- the set


class TemplateSet:
    """All templates under one folder, compiled once and rendered many times."""

    def __init__(self, directory: Path, default_language: str = "en") -> None:
        self.directory = directory
        self.default_language = default_language
        self._text = _environment(directory, autoescape=False)
        self._html = _environment(directory, autoescape=True)
        # SMS texts a name such as Lucía would force into UCS-2, rendered again (rare)
        self._gsm7 = _environment(directory, autoescape=False, finalize=_folded)
        self._files = self._scan()
        self._resolved: dict[tuple[str, str, str | None], tuple[str, str] | None] = {}
        self._expressions: dict[str, Callable[..., Any]] = {}

    def _scan(self) -> dict[tuple[str, str, str | None], str]:
        found: dict[tuple[str, str, str | None], str] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.rglob("*.j2")):
            match = _SUFFIX.match(path.name)
            if not match:
                continue
            relative = path.relative_to(self.directory)
            name = str(relative.parent / match["step"]).replace("\\", "/")
            lang = match["lang"].replace("_", "-") if match["lang"] else None
            found[(name, match["channel"], lang)] = str(relative).replace("\\", "/")
        return found

    def files(self) -> Iterator[tuple[str, str, str | None, str]]:
        """(template name, channel, language or None, relative file) for every file."""
        for (name, channel, lang), file in self._files.items():
            yield name, channel, lang, file

    def languages(self, name: str, channel: str) -> list[str | None]:
        return [lang for (n, c, lang) in self._files if n == name and c == channel]

    def has(self, name: str, channel: str) -> bool:
        return (name, channel, None) in self._files

    def resolve(self, name: str, channel: str, language: str | None) -> tuple[str, str] | None:
        """(file, language used) for a recipient's language, falling back to the default."""
        key = (name, channel, language)
        if key not in self._resolved:
            result: tuple[str, str] | None = None
            for lang in language_candidates(language):
                for (n, c, variant), file in self._files.items():
                    if n == name and c == channel and variant and variant.lower() == lang.lower():
                        result = (file, variant)
                        break
                if result:
                    break
            if result is None and (name, channel, None) in self._files:
                result = (self._files[(name, channel, None)], self.default_language)
            self._resolved[key] = result
        return self._resolved[key]

    def path(self, file: str) -> Path:
        return self.directory / file

    def render(self, name: str, channel: str, language: str | None, variables: Mapping[str, Any],
               zone: ZoneInfo) -> Rendered:
        """Render one message. Raises TemplateRenderError naming the file and line."""
        resolved = self.resolve(name, channel, language)
        if resolved is None:
            raise TemplateRenderError(f"no {channel} template {name}.{channel}.j2 in "
                                      f"{self.directory}")
        file, used = resolved
        context = {**variables, "_zone": zone, "_locale": locale_for(used), "_channel": channel}
        try:
            with limits():
                return self._render(file, channel, used, context)
        except TemplateRenderError as exc:
            raise TemplateRenderError(f"{_where(file, exc)}: {exc.message}") from None
        except UndefinedError as exc:
            raise TemplateRenderError(f"{_where(file, exc)}: {exc.message}") from None
        except TemplateError as exc:
            raise TemplateRenderError(f"{_where(file, exc)}: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError,
                RecursionError, MemoryError) as exc:
            raise TemplateRenderError(f"{_where(file, exc)}: {type(exc).__name__}: {exc}") \
                from None

    def _render(self, file: str, channel: str, used: str, context: dict[str, Any]) -> Rendered:
        if channel == "sms":
            body = _tidy(stream(self._text.get_template(file).generate(context)))
            if not is_gsm7(body):  # a name such as Lucía: is the text shorter without?
                folded = _tidy(stream(self._gsm7.get_template(file).generate(context)))
                if analyse(folded).segments < analyse(body).segments:
                    body = folded
            return Rendered("sms", body, template_file=file, language=used)
        text_template = self._text.get_template(file)
        subject = " ".join(_block(text_template, "subject", context).split())
        text = _tidy(_block(text_template, "text", context))
        html_template = self._html.get_template(file)
        html = _block(html_template, "html", context).strip() \
            if "html" in html_template.blocks else None
        return Rendered("email", text, subject=subject, html=html or None,
                        template_file=file, language=used)

    # ----------------------------------------------------------------- checking

    def check_file(self, file: str) -> list[Diagnostic]:
        """Syntax, required email blocks and undefined variables of one template file."""
        where = str(self.directory / file)
        try:
            source = self.path(file).read_text(encoding=ENCODING)
        except (OSError, UnicodeDecodeError) as exc:
            return [Diagnostic(where, None, f"cannot read the template: {exc}",
                               "save it as UTF-8 text")]
        try:
            tree = self._text.parse(source, file)
        except TemplateSyntaxError as exc:
            return [Diagnostic(where, exc.lineno, f"template syntax error: {exc.message}",
                               "check the {{ }} and {% %} tags on this line", code="jinja")]
        found = list(self.check_names(tree, where))
        if found:  # (Jinja cannot read the variables of a template with unknown filters)
            return found
        found.extend(check_variables(tree, where))
        if file.endswith(".email.j2"):
            blocks = {block.name for block in tree.find_all(nodes.Block)}
            for required in ("subject", "text"):
                if required not in blocks:
                    found.append(Diagnostic(
                        where, 1, f"email template has no {required} block",
                        f"add {{% block {required} %}}…{{% endblock %}}", code="email-block"))
        return found

    def check_names(self, tree: nodes.Template, where: str) -> Iterator[Diagnostic]:
        """Filters (``| date``) and tests (``is defined``) that do not exist — Jinja itself
        would only find one when a message is sent."""
        for kind, node_type, known, fix in (
                ("filter", nodes.Filter, self._text.filters,
                 f"use one of Touchpoint's ({', '.join(FILTERS)}) or Jinja's built-in filters"),
                ("test", nodes.Test, self._text.tests,
                 "use one of Jinja's built-in tests (defined, none, number, …)")):
            names = [name for name in known if not name.startswith("_")]
            for node in tree.find_all(node_type):
                if node.name not in known:
                    yield Diagnostic(where, node.lineno, f"unknown {kind} '{node.name}'",
                                     did_you_mean(node.name, names, fix),
                                     code=f"unknown-{kind}")

    def references(self, file: str) -> dict[str, int]:
        """Each variable one file reads, as a dotted path (``practice.links.parking``),
        with the first line it is read on."""
        found: dict[str, int] = {}
        try:
            tree = self._text.parse(self.path(file).read_text(encoding=ENCODING), file)
            for path, line in _references(tree):
                dotted = ".".join(path)
                found[dotted] = min(found.get(dotted, line), line)
        except (OSError, UnicodeDecodeError, TemplateSyntaxError):
            return {}  # (check_file reports why)
        return found

    def moments_shown(self, file: str) -> dict[tuple[str, str], int]:
        """``{("appointment.start", "time"): line, ("appointment.start", "date"): line}``:
        which parts of each date or time one file shows through the date filters, with
        the first line it does so on (``| datetime`` shows both)."""
        try:
            tree = self._text.parse(self.path(file).read_text(encoding=ENCODING), file)
        except (OSError, UnicodeDecodeError, TemplateSyntaxError):
            return {}
        found: dict[tuple[str, str], int] = {}
        for node in tree.find_all(nodes.Filter):
            parts = MOMENT_FILTERS.get(node.name, ())
            path = _dotted(node.node) if parts else None
            if path is None:
                continue
            for part in parts:
                found[(path, part)] = min(found.get((path, part), node.lineno), node.lineno)
        return found

    def variables_used(self, file: str) -> set[str]:
        """``{"patient.first_name", "appointment.start", …}`` used by one file."""
        return set(self.references(file))

    def source(self, file: str) -> str:
        try:
            return self.path(file).read_text(encoding=ENCODING)
        except (OSError, UnicodeDecodeError):
            return ""

    def literal_non_gsm(self, file: str) -> Iterator[tuple[int, int, NonGsmCharacter]]:
        """(line, column, character) for each character of the file's own text — not of
        the values it inserts, nor inside ``{{ }}``, ``{% %}`` or ``{# #}`` — that is not
        GSM-7. Columns count from 1."""
        closing = {"{{": "}}", "{%": "%}", "{#": "#}"}
        inside: str | None = None
        for number, line in enumerate(self.source(file).splitlines(), start=1):
            column = 0
            while column < len(line):
                pair = line[column:column + 2]
                if inside is None and pair in closing:
                    inside, column = closing[pair], column + 2
                    continue
                if inside is not None:
                    if pair == inside:
                        inside = None
                        column += 2
                    else:
                        column += 1
                    continue
                char = line[column]
                if not is_gsm7(char):
                    yield number, column + 1, analyse(char).non_gsm[0]
                column += 1

    def check_expression(self, source: str, where: str, line: int) -> list[Diagnostic]:
        """Unknown variables in a step's ``only_if`` expression, reported at ``line``."""
        tree = self._text.parse("{{ " + source + " }}")
        return [Diagnostic(where, line, f"only_if: {d.message}", d.fix, code=d.code)
                for d in check_variables(tree, where)]

    def compile_expression(self, source: str) -> Callable[..., Any]:
        """A step's ``only_if`` condition, compiled in the same sandbox (once)."""
        compiled = self._expressions.get(source)
        if compiled is None:
            compiled = self._text.compile_expression(source, undefined_to_none=False)
            self._expressions[source] = compiled
        return compiled


def _where(file: str, exc: BaseException) -> str:
    """``file:line`` of the template line that raised ``exc`` (from the traceback)."""
    line = None
    trace = exc.__traceback__
    while trace is not None:
        template = trace.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:  # a compiled template's frame: map its line back
            line = template.get_corresponding_lineno(trace.tb_lineno)
        elif trace.tb_frame.f_code.co_filename.endswith(file):  # rewritten by Jinja already
            line = trace.tb_lineno
        trace = trace.tb_next
    return f"{file}:{line}" if line else file


def _block(template: Template, name: str, context: Mapping[str, Any]) -> str:
    render = template.blocks.get(name)
    if render is None:
        return ""
    return stream(render(template.new_context(dict(context))))


def _tidy(text: str) -> str:
    tidy = "\n".join(line.rstrip() for line in text.strip().splitlines())
    return _BLANK_LINES.sub("\n\n", tidy) if "\n\n\n" in tidy else tidy


_BLANK_LINES = re.compile(r"\n{3,}")


def _dotted(node: nodes.Node | None) -> str | None:
    """``appointment.start`` for the expression that reads it; None for anything else."""
    path: list[str] = []
    while isinstance(node, nodes.Getattr):
        path.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return ".".join([node.name, *reversed(path)])


def _references(tree: nodes.Template) -> Iterator[tuple[tuple[str, ...], int]]:
    """(dotted path, line) for every variable the template reads: ``patient.first_name``
    → ``("patient", "first_name")``, ``practice.links["x"].y`` → ``("practice", "links",
    "x", "y")``; a bare name (``{% if appointment %}``) → ``("appointment",)``."""
    undeclared = meta.find_undeclared_variables(tree)
    inner: set[int] = set()  # nodes that are part of a longer chain
    chains: list[tuple[tuple[str, ...], int]] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if id(node) in inner:
            continue
        path: list[str] = []
        current: nodes.Node = node
        while isinstance(current, (nodes.Getattr, nodes.Getitem)):
            inner.add(id(current))
            if isinstance(current, nodes.Getattr):
                path.append(current.attr)
            elif isinstance(current.arg, nodes.Const) and isinstance(current.arg.value, str):
                path.append(current.arg.value)
            else:
                path = []  # computed subscript: only what is before it is known
            current = current.node
        if isinstance(current, nodes.Name) and current.name in undeclared:
            inner.add(id(current))
            chains.append(((current.name, *reversed(path)), node.lineno))
    yield from chains
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name in undeclared and id(name) not in inner:
            yield (name.name,), name.lineno


def check_variables(tree: nodes.Template, where: str,
                    extra_names: Iterable[str] = ("unsubscribe_url",)) -> Iterator[Diagnostic]:
    known_top = (*FIELDS, *extra_names)
    for path, line in _references(tree):
        name, attr = path[0], (path[1] if len(path) > 1 else None)
        if name not in known_top:
            yield Diagnostic(where, line, f"unknown variable '{name}'",
                             did_you_mean(name, known_top,
                                          f"templates can use {', '.join(FIELDS)}"),
                             code="undefined")
        elif attr is not None and name in FIELDS and attr not in FIELDS[name]:
            yield Diagnostic(where, line, f"'{name}' has no field '{attr}'",
                             did_you_mean(attr, FIELDS[name],
                                          f"{name} has: {', '.join(FIELDS[name])}"),
                             code="undefined")

