"""Limits on one template render: no edit to a message can hang or exhaust the engine.

Templates already run in Jinja's sandbox (no attribute escapes, ``range`` capped). A
practice manager's typo or a pasted snippet can still ask for work without end —
``{{ 9**99999999 }}``, ``{{ 'x' * 10**9 }}``, loops inside loops, a macro that calls
itself twice. :class:`LimitedSandbox` refuses them in any thread (the daemon renders
outside the main thread, where no signal can interrupt a render):

* before the work: ``**``, ``*``, ``+`` and ``%`` whose result would be longer than
  :data:`MAX_TEXT` characters or a number of more than :data:`MAX_DIGITS` digits; calls
  and filters that would build such a text (``center``, ``indent``, ``replace``,
  ``join``, a format width, …);
* after it: any value a call, a filter or a ``~`` returns that is longer than
  :data:`MAX_TEXT`;
* within :func:`limits` (one render): at most :data:`MAX_LOOP` loop iterations in all,
  :data:`MAX_WRITTEN` characters written by ``{{ }}`` (macros and blocks included),
  :data:`MAX_BUILT` characters in all the values operators, calls, filters and ``~``
  build (a loop that piles texts into a list or dict), and :data:`RENDER_SECONDS`,
  checked on every iteration, call, filter and operator, and every
  :data:`CHUNKS_PER_CHECK` pieces of output; :func:`stream` stops the message itself at
  :data:`MAX_TEXT`.

Each refusal is a :class:`RenderLimit` (a Jinja ``SecurityError``) raised inside the
template, so its traceback names the template line; the template set reports it as a
``TemplateRenderError`` with ``file:line``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from string import Formatter
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import _PassArg

MAX_TEXT = 200_000  # characters in one message, and in any one value built on the way
MAX_WRITTEN = 10 * MAX_TEXT  # characters all {{ }} of one render may write (macros too)
MAX_BUILT = 50 * MAX_TEXT  # characters (or items) of all values one render builds
MAX_DIGITS = 3_000  # digits of any number a template computes
MAX_LOOP = 100_000  # loop iterations in one render, all loops together
RENDER_SECONDS = 2.0  # one message (a practice's messages render in about a millisecond)
CHUNKS_PER_CHECK = 64  # pieces of a streamed message between two looks at the clock

LOOP_GUARD = "_touchpoint_loop"  # the filter every {% for %} iterable goes through
SIZE_GUARD = "_touchpoint_size"  # ... and every ~ concatenation
_MAX_BITS = int(MAX_DIGITS * 3.33)
_SIZED = (str, bytes, list, tuple, dict)
# filters and str methods whose numeric arguments are widths or counts
_COUNTED = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap",
                      "truncate", "batch", "slice"})
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\d*)(?:\.(\d*))?")


class RenderLimit(SecurityError):
    """A template asked for more than a message may take."""


@dataclass
class _Budget:
    deadline: float
    iterations: int = 0
    written: int = 0
    built: int = 0


_budget: ContextVar[_Budget | None] = ContextVar("touchpoint_render_budget", default=None)


class _Limits:
    """(a plain context manager: every message enters one, and a generator-based one
    costs several times as much)"""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        self._token = _budget.set(_Budget(time.monotonic() + self._seconds))

    def __exit__(self, *exc: object) -> None:
        _budget.reset(self._token)


def limits(seconds: float = RENDER_SECONDS) -> AbstractContextManager[None]:
    """One render: its deadline and budgets (in this thread or task only)."""
    return _Limits(seconds)


def check_time() -> None:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise RenderLimit(f"the template took longer than {RENDER_SECONDS:g} s to render "
                          "— look for loops inside loops, or a macro that calls itself")


def stream(chunks: Iterator[str]) -> str:
    """Join a streamed render (``Template.generate``), stopping it at :data:`MAX_TEXT`
    characters or the deadline. The error is thrown into the template's generator, so
    it carries the template line being written.

    The size is checked at every piece, the clock every :data:`CHUNKS_PER_CHECK` pieces:
    a message is a few dozen pieces, and what can take long between two of them — a loop,
    a call, a filter, an operator — checks the clock itself."""
    parts: list[str] = []
    size = 0
    check_at = CHUNKS_PER_CHECK
    for chunk in chunks:
        size += len(chunk)
        parts.append(chunk)
        if size > MAX_TEXT or len(parts) >= check_at:
            check_at += CHUNKS_PER_CHECK
            try:
                if size > MAX_TEXT:
                    raise _too_long(size, "the message would be")
                check_time()
            except RenderLimit as exc:
                if isinstance(chunks, Generator):
                    chunks.throw(exc)  # re-raised from inside the template, with its line
                raise
    return "".join(parts)


def _too_long(size: int, what: str = "a value would be") -> RenderLimit:
    return RenderLimit(f"{what} {size:,} characters long — a message may have at most "
                       f"{MAX_TEXT:,}")


def _too_many_digits(bits: int) -> RenderLimit:
    return RenderLimit(f"a number of about {int(bits / 3.33):,} digits — templates compute "
                       f"numbers of up to {MAX_DIGITS:,} digits")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(value: object) -> None:
    """A value just built: not too long, and within the render's budget."""
    if isinstance(value, _SIZED):
        if len(value) > MAX_TEXT:
            raise _too_long(len(value))
        budget = _budget.get()
        if budget is not None:
            budget.built += len(value)
            if budget.built > MAX_BUILT:
                raise RenderLimit(f"the template builds more than {MAX_BUILT:,} characters "
                                  "of text in all — look for a loop that keeps adding to a "
                                  "list or text")
    if _is_int(value) and value.bit_length() > _MAX_BITS:  # type: ignore[attr-defined]
        raise _too_many_digits(value.bit_length())  # type: ignore[attr-defined]


def _check_count(value: object) -> None:
    """A width or count given to a call or filter (``center(10**9)``)."""
    if _is_int(value) and abs(value) > MAX_TEXT:  # type: ignore[arg-type]
        raise RenderLimit(f"the width or count {value:,} is too large — a message may have "
                          f"at most {MAX_TEXT:,} characters")


def _check_format(pattern: str) -> None:
    """Widths and precisions in a ``%`` or ``str.format`` pattern (``%0999999999d``)."""
    for match in _PERCENT.finditer(pattern):
        for digits in match.groups():
            if digits:
                _check_count(int(digits))
    if "{" in pattern:
        try:
            specs = [spec for _, _, spec, _ in Formatter().parse(pattern) if spec]
        except ValueError:
            return  # not a format pattern; Python says so if it is used as one
        for spec in specs:
            for digits in re.findall(r"\d+", spec):
                _check_count(int(digits))


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and _is_int(left) and _is_int(right) and right > 0:
        bits = max(abs(left).bit_length() - 1, 0) * right
        if bits > _MAX_BITS:
            raise _too_many_digits(bits)
    elif operator == "*":
        bits = abs(left).bit_length() + abs(right).bit_length() \
            if _is_int(left) and _is_int(right) else 0
        if bits > _MAX_BITS + 1:
            raise _too_many_digits(bits)
        for sized, times in ((left, right), (right, left)):
            if isinstance(sized, _SIZED) and _is_int(times) and len(sized) * times > MAX_TEXT:
                raise _too_long(len(sized) * times)
    elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
        if len(left) + len(right) > MAX_TEXT:
            raise _too_long(len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


def _check_growth(name: str, target: Any, args: tuple[Any, ...],
                  kwargs: Mapping[str, Any]) -> None:
    """What a str method or filter named ``name`` would build from ``target``."""
    if name in _COUNTED:
        for value in (*args, *kwargs.values()):
            _check_count(value)
    if name == "join":
        separator = args[0] if args else kwargs.get("d", "")
        if isinstance(target, str):  # "sep".join(items)
            separator, target = target, separator
        if isinstance(separator, str) and isinstance(target, _SIZED):
            size = len(separator) * len(target) + sum(
                len(item) for item in target if isinstance(item, _SIZED))
            if size > MAX_TEXT:
                raise _too_long(size)
    if not isinstance(target, str):
        return
    if name in ("format", "format_map"):
        _check_format(target)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) \
            and isinstance(args[1], str):
        found = target.count(args[0]) if args[0] else len(target) + 1
        if len(target) + found * len(args[1]) > MAX_TEXT:
            raise _too_long(len(target) + found * len(args[1]))
    elif name in ("expandtabs", "indent"):
        width = args[0] if args and _is_int(args[0]) else (8 if name == "expandtabs" else 4)
        size = width * (target.count("\t") if name == "expandtabs" else target.count("\n") + 1)
        if size > MAX_TEXT:
            raise _too_long(size)


def _guard_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    skip = 0 if _PassArg.from_obj(function) is None else 1  # the context or environment

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check_time()
        if len(args) > skip:
            target = args[skip]
            if name == "join" and not isinstance(target, _SIZED):
                target = list(target)  # (join reads it once; know its length first)
                args = (*args[:skip], target, *args[skip + 1:])
            _check_growth(name, target, args[skip + 1:], kwargs)
        result = function(*args, **kwargs)
        _check_size(result)
        return result

    return guarded


def _loop_guard(iterable: Any) -> Iterator[Any]:
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP:
                raise RenderLimit(f"the loops went through more than {MAX_LOOP:,} items "
                                  "— loop over fewer")
            if time.monotonic() > budget.deadline:
                check_time()
        yield item


def _size_guard(value: Any) -> Any:
    _check_size(value)
    return value


def _count_written(value: Any) -> Any:
    """(``finalize``: every ``{{ }}`` passes here before it is written)"""
    budget = _budget.get()
    if budget is not None and isinstance(value, str):
        budget.written += len(value)
        if budget.written > MAX_WRITTEN:
            raise RenderLimit(f"the template writes more than {MAX_WRITTEN:,} characters "
                              f"— a message may have at most {MAX_TEXT:,}")
    return value


def _range(*args: int) -> range:
    for value in args:
        if not _is_int(value):
            raise TypeError(f"range() takes whole numbers, not {type(value).__name__}")
    found = range(*args)
    if len(found) > MAX_LOOP:
        raise RenderLimit(f"range({', '.join(f'{a:,}' for a in args)}) has {len(found):,} "
                          f"numbers — a template may loop over at most {MAX_LOOP:,}")
    return found


class LimitedSandbox(SandboxedEnvironment):
    """Jinja's sandbox with the limits above; filters go in with :meth:`add_filters`."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, finalize: Callable[[Any], Any] | None = None,
                 **kwargs: Any) -> None:
        # ``finalize``: the caller's, then the count of what is written
        super().__init__(*args, finalize=_count_written if finalize is None else
                         lambda value: _count_written(finalize(value)), **kwargs)
        self.globals["range"] = _range
        self.filters = {name: _guard_filter(name, function)
                        for name, function in self.filters.items()}
        self.filters[LOOP_GUARD] = _loop_guard
        self.filters[SIZE_GUARD] = _size_guard

    def add_filters(self, filters: Mapping[str, Callable[..., Any]]) -> None:
        """Install filters, each behind the limits (as Jinja's own already are)."""
        for name, function in filters.items():
            self.filters[name] = _guard_filter(name, function)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every loop's items go through the loop guard, every ``~`` through the size
        guard."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, LOOP_GUARD, [], [], None, None,
                                     lineno=loop.iter.lineno)
        for parent in [tree, *tree.find_all(nodes.Node)]:
            for field in parent.fields:
                child = getattr(parent, field, None)
                if isinstance(child, nodes.Concat):
                    setattr(parent, field, _guarded_concat(child))
                elif isinstance(child, list):
                    setattr(parent, field, [_guarded_concat(c) if isinstance(c, nodes.Concat)
                                            else c for c in child])
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_time()
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _check_size(result)
        return result

    def call(__self, __context: Context, __obj: Any,  # (Jinja's own signature)
             *args: Any, **kwargs: Any) -> Any:
        check_time()
        method = getattr(__obj, "__wrapped__", __obj)  # (the sandbox wraps str.format)
        target = getattr(method, "__self__", None)
        if isinstance(target, (str, list)):
            _check_growth(getattr(method, "__name__", ""), target, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(result)
        return result


def _guarded_concat(node: nodes.Concat) -> nodes.Filter:
    return nodes.Filter(node, SIZE_GUARD, [], [], None, None, lineno=node.lineno)
