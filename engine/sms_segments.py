"""SMS encoding and segment counting, as carriers (and Twilio) count them.

An SMS carries at most 140 octets of user data. How many characters fit depends on the
encoding, which is chosen per message:

**GSM-7** (3GPP TS 23.038 §6.2.1, the "GSM 03.38" default alphabet) packs each character
into 7 bits, so 140 octets hold 160 septets. It is used when *every* character of the text
is in the default alphabet (127 characters: ASCII letters, digits and most punctuation,
``@ £ $ ¥ è é ù ì ò Ç Ø ø Å å Δ _ Φ Γ Λ Ω Π Ψ Σ Θ Ξ Æ æ ß É ¤ ¡ Ä Ö Ñ Ü § ¿ ä ö ñ ü à``,
LF and CR) or in its extension table (§6.2.1.1): ``^ { } \\ [ ~ ] | €`` and form feed.
An extension character is sent as ESC + character and therefore costs **2 septets**.
Notably *not* GSM-7: the backtick, tab, ``ç``, ``á í ó ú``, curly quotes, dashes, the
ellipsis, the no-break space and every emoji.

**UCS-2** (in practice UTF-16) is used as soon as one character is outside GSM-7. Each
UTF-16 code unit costs 16 bits, so a segment holds 70 units; a character outside the Basic
Multilingual Plane (most emoji) is a surrogate pair and costs 2 units. In a UCS-2 message
*every* character costs at least one unit — including GSM extension characters, which are
no longer escaped.

**Concatenated messages** (3GPP TS 23.040 §9.2.3.24.1): when the text does not fit in one
SMS, every part starts with a 6-octet User Data Header that lets the handset reassemble the
parts, leaving 134 octets = 153 septets (GSM-7) or 67 code units (UCS-2) per part. A part
never ends in the middle of an ESC + character pair, nor in the middle of a surrogate pair.

Numbers and splitting follow Twilio's open-source calculator
(https://github.com/TwilioDevEd/message-segment-calculator, ``src/libs/SegmentedMessage.ts``
and ``src/libs/Segment.ts``), whose published test vectors are in
``tests/test_sms_segments.py``:

* ``characters`` is what Twilio reports as "number of characters": for GSM-7 the number of
  septets (an extension character counts 2 — it is what fills the message); for UCS-2 the
  number of user-perceived characters (extended grapheme clusters, Unicode UAX #29), so
  ``🏳️‍🌈`` (four code points, six code units) counts 1. Like Twilio, CR LF counts 2.
* In UCS-2, a grapheme cluster is kept whole in one part (Twilio does this, and so does
  Android's ``SmsMessage.fragmentText``); a cluster longer than a whole part (absurd
  stacks of combining marks) is split between code points, never inside a surrogate pair.
* An empty text is one GSM-7 segment with 0 characters and 0 units, as in Twilio's
  calculator (an empty SMS is still one message), and ``split_segments("") == [""]``.

Grapheme clusters are found with the rules of UAX #29 that matter for SMS text (combining
marks, spacing marks, ZWJ emoji sequences, emoji modifiers, keycaps, flag pairs, Hangul
jamo) using :mod:`unicodedata` general categories; "Extended_Pictographic" is approximated
by category ``So`` plus © and ®. Prepend characters (a few Indic/Arabic format marks) are
not joined. Only UCS-2 texts need clusters: nothing in GSM-7 ever combines.

Everything is precomputed at import; a GSM-7 text of one part is analysed with a handful of
C-level string operations and no per-character Python loop.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = [
    "Encoding",
    "NonGsmCharacter",
    "SegmentInfo",
    "analyse",
    "is_gsm7",
    "split_segments",
    "to_gsm7",
]

Encoding = Literal["GSM-7", "UCS-2"]

# --- GSM 03.38 tables ---------------------------------------------------------------------

# The default alphabet in code order (3GPP TS 23.038 §6.2.1): the character at index n has
# GSM code n. 0x1B is ESC (the escape to the extension table), which is not a character of
# its own and is removed below. Greek capitals are written as escapes so that no look-alike
# (e.g. OHM SIGN for OMEGA) can slip in.
_GSM_DEFAULT_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00-0x0F
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\x1bÆæßÉ"  # 0x10-0x1F
    " !\"#¤%&'()*+,-./"  # 0x20-0x2F
    "0123456789:;<=>?"  # 0x30-0x3F
    "¡ABCDEFGHIJKLMNO"  # 0x40-0x4F
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50-0x5F
    "¿abcdefghijklmno"  # 0x60-0x6F
    "pqrstuvwxyzäöñüà"  # 0x70-0x7F
)

# The extension table (§6.2.1.1): each is sent as ESC + code and costs two septets.
_GSM_EXTENSION_CHARS = "\f^{}\\[~]|€"

_GSM_BASIC: frozenset[str] = frozenset(_GSM_DEFAULT_ALPHABET) - {"\x1b"}
_GSM_EXTENSION: frozenset[str] = frozenset(_GSM_EXTENSION_CHARS)
_GSM_ALL: frozenset[str] = _GSM_BASIC | _GSM_EXTENSION

# --- Segment sizes (140 octets; 6 octets of UDH per part of a concatenated message) --------

_GSM_SINGLE = 160  # septets in a message of one part
_GSM_MULTI = 153  # septets per part of a concatenated message
_UCS2_SINGLE = 70  # UTF-16 code units in a message of one part
_UCS2_MULTI = 67  # UTF-16 code units per part of a concatenated message

# --- Suggested GSM-7 replacements ----------------------------------------------------------

# Characters that word processors and phones put in text "smartly". An empty string means
# "delete it" (it is invisible). Characters not listed here get a suggestion from their
# compatibility decomposition when that is plain GSM-7 (á → a, ﬁ → fi, ™ → TM, Ａ → A).
_REPLACEMENTS: dict[str, str] = {
    # single quotes, apostrophes, primes
    "\u2018": "'",  # LEFT SINGLE QUOTATION MARK
    "\u2019": "'",  # RIGHT SINGLE QUOTATION MARK
    "\u201a": "'",  # SINGLE LOW-9 QUOTATION MARK
    "\u201b": "'",  # SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2032": "'",  # PRIME
    "\u2039": "'",  # SINGLE LEFT-POINTING ANGLE QUOTATION MARK
    "\u203a": "'",  # SINGLE RIGHT-POINTING ANGLE QUOTATION MARK
    "\u02bc": "'",  # MODIFIER LETTER APOSTROPHE
    "\u00b4": "'",  # ACUTE ACCENT
    "`": "'",  # GRAVE ACCENT (backtick)
    "\uff07": "'",  # FULLWIDTH APOSTROPHE
    # double quotes
    "\u201c": '"',  # LEFT DOUBLE QUOTATION MARK
    "\u201d": '"',  # RIGHT DOUBLE QUOTATION MARK
    "\u201e": '"',  # DOUBLE LOW-9 QUOTATION MARK
    "\u201f": '"',  # DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2033": '"',  # DOUBLE PRIME
    "\u00ab": '"',  # LEFT-POINTING DOUBLE ANGLE QUOTATION MARK
    "\u00bb": '"',  # RIGHT-POINTING DOUBLE ANGLE QUOTATION MARK
    # dashes and hyphens
    "\u2010": "-",  # HYPHEN
    "\u2011": "-",  # NON-BREAKING HYPHEN
    "\u2012": "-",  # FIGURE DASH
    "\u2013": "-",  # EN DASH
    "\u2014": "-",  # EM DASH
    "\u2015": "-",  # HORIZONTAL BAR
    "\u2212": "-",  # MINUS SIGN
    "\u2043": "-",  # HYPHEN BULLET
    # bullets and dots
    "\u2022": "-",  # BULLET
    "\u00b7": "-",  # MIDDLE DOT
    "\u2026": "...",  # HORIZONTAL ELLIPSIS
    # spaces and invisible characters
    "\u00a0": " ",  # NO-BREAK SPACE
    "\u2000": " ",  # EN QUAD
    "\u2001": " ",  # EM QUAD
    "\u2002": " ",  # EN SPACE
    "\u2003": " ",  # EM SPACE
    "\u2004": " ",  # THREE-PER-EM SPACE
    "\u2005": " ",  # FOUR-PER-EM SPACE
    "\u2006": " ",  # SIX-PER-EM SPACE
    "\u2007": " ",  # FIGURE SPACE
    "\u2008": " ",  # PUNCTUATION SPACE
    "\u2009": " ",  # THIN SPACE
    "\u200a": " ",  # HAIR SPACE
    "\u202f": " ",  # NARROW NO-BREAK SPACE
    "\u205f": " ",  # MEDIUM MATHEMATICAL SPACE
    "\u3000": " ",  # IDEOGRAPHIC SPACE
    "\t": " ",  # CHARACTER TABULATION
    "\u2028": "\n",  # LINE SEPARATOR
    "\u2029": "\n",  # PARAGRAPH SEPARATOR
    "\u00ad": "",  # SOFT HYPHEN
    "\u200b": "",  # ZERO WIDTH SPACE
    "\u2060": "",  # WORD JOINER
    "\ufeff": "",  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    "\u200c": "",  # ZERO WIDTH NON-JOINER
    "\u200d": "",  # ZERO WIDTH JOINER
    # symbols
    "\u00a9": "(C)",  # COPYRIGHT SIGN
    "\u00ae": "(R)",  # REGISTERED SIGN
    "\u00d7": "x",  # MULTIPLICATION SIGN
    "\u00f7": "/",  # DIVISION SIGN
    "\u2044": "/",  # FRACTION SLASH
    "\u2215": "/",  # DIVISION SLASH
    "\u00b1": "+/-",  # PLUS-MINUS SIGN
    "\u00bc": "1/4",  # VULGAR FRACTION ONE QUARTER
    "\u00bd": "1/2",  # VULGAR FRACTION ONE HALF
    "\u00be": "3/4",  # VULGAR FRACTION THREE QUARTERS
}

# --- Data types ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NonGsmCharacter:
    """One character that forces a message into UCS-2.

    ``position`` is the 0-based index in the Python string (a code point index, not a UTF-16
    offset); :attr:`column` is the same position counted from 1, for people. ``replacement``
    is a GSM-7 string to use instead (``""`` means the character is invisible and can simply
    be deleted), or None when there is no faithful GSM-7 equivalent (emoji, most letters of
    non-Latin scripts).
    """

    char: str
    position: int
    name: str
    replacement: str | None

    @property
    def column(self) -> int:
        """The position counted from 1 (the first character is column 1)."""
        return self.position + 1

    def describe(self) -> str:
        """One line for a practice manager, e.g. ``the character ’ (RIGHT SINGLE QUOTATION
        MARK) at column 13 forces UCS-2; use "'" instead``."""
        code = f"U+{ord(self.char):04X}"
        if not self.char.isprintable() or self.char.isspace():
            shown = code
        elif unicodedata.combining(self.char) or unicodedata.category(self.char) == "Me":
            shown = "\u25cc" + self.char  # a combining mark is shown on a dotted circle
        else:
            shown = self.char
        label = f"{shown} ({self.name})"
        if label.endswith(f"({code})"):  # no Unicode name: the code point says it all
            label = code
        if self.replacement is None:
            advice = "there is no GSM-7 equivalent"
        elif self.replacement == "":
            advice = "delete it"
        else:
            advice = f"use {_quote(self.replacement)} instead"
        return f"the character {label} at column {self.column} forces UCS-2; {advice}"


@dataclass(frozen=True)
class SegmentInfo:
    """How a text travels as SMS.

    ``units`` is what fills the segments: septets for GSM-7 (an extension character counts
    2), UTF-16 code units for UCS-2. ``characters`` is Twilio's "number of characters" (see
    the module docstring). ``non_gsm`` lists every character that forced UCS-2, in text
    order (empty for GSM-7).
    """

    encoding: Encoding
    segments: int
    characters: int
    units: int
    non_gsm: tuple[NonGsmCharacter, ...]

    def as_dict(self) -> dict[str, object]:
        """``{"encoding": ..., "segments": N, "characters": N}`` — for JSON and logs."""
        return {"encoding": self.encoding, "segments": self.segments, "characters": self.characters}


# --- Public functions ----------------------------------------------------------------------


def is_gsm7(text: str) -> bool:
    """True when every character of ``text`` is in the GSM-7 alphabet or its extension
    table (so the message is sent as GSM-7). The empty text is GSM-7."""
    return _GSM_ALL.issuperset(text)


def analyse(text: str) -> SegmentInfo:
    """Encoding, segment count, character count and the characters that force UCS-2."""
    if _GSM_ALL.issuperset(text):
        septets = len(text) + _count_extension(text)
        if septets <= _GSM_SINGLE:
            segments = 1
        elif septets == len(text):  # no escape pairs: parts are plain slices of 153
            segments = -(-septets // _GSM_MULTI)
        else:
            segments = _count_parts(_gsm_atoms(text), _GSM_MULTI)
        return SegmentInfo("GSM-7", segments, septets, septets, ())

    units = _utf16_units(text)
    clusters = _grapheme_clusters(text)
    if units <= _UCS2_SINGLE:
        segments = 1
    elif len(clusters) == units:  # every cluster is one code unit: parts are slices of 67
        segments = -(-units // _UCS2_MULTI)
    else:
        segments = _count_parts(_ucs2_atoms(clusters), _UCS2_MULTI)
    non_gsm = tuple(
        NonGsmCharacter(char, position, _char_name(char), _replacement(char))
        for position, char in enumerate(text)
        if char not in _GSM_ALL
    )
    return SegmentInfo("UCS-2", segments, len(clusters), units, non_gsm)


def split_segments(text: str) -> list[str]:
    """The text of each SMS part, in order; ``"".join(split_segments(t)) == t``.

    A message that fits in one SMS (160 septets / 70 code units) is returned whole. Otherwise
    parts hold at most 153 septets / 67 code units and never split an ESC + character pair,
    a surrogate pair or (in UCS-2) a grapheme cluster. ``len(split_segments(t))`` always
    equals ``analyse(t).segments``; the empty text gives ``[""]``.
    """
    if _GSM_ALL.issuperset(text):
        if len(text) + _count_extension(text) <= _GSM_SINGLE:
            return [text]
        return _pack(_gsm_atoms(text), _GSM_MULTI)
    if _utf16_units(text) <= _UCS2_SINGLE:
        return [text]
    return _pack(_ucs2_atoms(_grapheme_clusters(text)), _UCS2_MULTI)


def to_gsm7(text: str) -> str:
    """``text`` with every character that has a GSM-7 stand-in replaced by it.

    ``"sáb, 10 oct"`` → ``"sab, 10 oct"``; characters without one (emoji) are kept. For
    text the engine writes itself (formatted dates) and values it inserts into an SMS
    when that saves segments (a name such as Lucía) — never for a template's own words
    or what a patient wrote to us.
    """
    if _GSM_ALL.issuperset(text):
        return text
    out = []
    for char in text:
        replacement = None if char in _GSM_ALL else _replacement(char)
        out.append(char if replacement is None else replacement)
    return "".join(out)


# --- Helpers -------------------------------------------------------------------------------


def _count_extension(text: str) -> int:
    return sum(text.count(char) for char in _GSM_EXTENSION_CHARS)


def _utf16_units(text: str) -> int:
    # "surrogatepass" so that a lone surrogate (possible in a Python str) counts as one unit.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _gsm_atoms(text: str) -> Iterable[tuple[str, int]]:
    return ((char, 2 if char in _GSM_EXTENSION else 1) for char in text)


def _ucs2_atoms(clusters: list[str]) -> Iterable[tuple[str, int]]:
    for cluster in clusters:
        cost = _utf16_units(cluster)
        if cost <= _UCS2_MULTI:
            yield cluster, cost
        else:  # a cluster bigger than a part: fall back to code points (surrogates stay whole)
            for char in cluster:
                yield char, _utf16_units(char)


def _pack(atoms: Iterable[tuple[str, int]], limit: int) -> list[str]:
    """Greedy packing of indivisible pieces into parts of at most ``limit`` units."""
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for piece, cost in atoms:
        if used + cost > limit and current:
            parts.append("".join(current))
            current = []
            used = 0
        current.append(piece)
        used += cost
    parts.append("".join(current))
    return parts


def _count_parts(atoms: Iterable[tuple[str, int]], limit: int) -> int:
    parts = 1
    used = 0
    for _piece, cost in atoms:
        if used + cost > limit and used:
            parts += 1
            used = 0
        used += cost
    return parts


def _quote(text: str) -> str:
    if not text.isprintable():
        return repr(text)
    return f'"{text}"' if "'" in text or text.isspace() else f"'{text}'"


@lru_cache(maxsize=1024)
def _char_name(char: str) -> str:
    return unicodedata.name(char, "") or f"U+{ord(char):04X}"


@lru_cache(maxsize=1024)
def _replacement(char: str) -> str | None:
    """A GSM-7 stand-in for a non-GSM character, or None."""
    if char in _REPLACEMENTS:
        return _REPLACEMENTS[char]
    category = unicodedata.category(char)
    if category in ("Mn", "Me"):
        # A combining mark on its own code point (decomposed text, emoji variation
        # selectors): dropping it leaves the base character.
        return ""
    decomposed = unicodedata.normalize("NFKD", char)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    if not stripped or not _GSM_ALL.issuperset(stripped):
        return None
    if stripped.isspace() and not category.startswith("Z"):
        return None  # a spacing accent such as ¨ decomposes to space + combining mark
    return stripped


# --- Grapheme clusters (UAX #29, the rules that matter for SMS) ----------------------------

_OTHER, _CONTROL, _EXTEND, _ZWJ, _SPACING_MARK, _REGIONAL, _PICTO = range(7)
_HANGUL_L, _HANGUL_V, _HANGUL_T, _HANGUL_LV, _HANGUL_LVT = range(7, 12)

_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Classes that can join a character to the one before it (a pictograph joins only after ZWJ).
_JOINING = frozenset({_EXTEND, _ZWJ, _SPACING_MARK, _REGIONAL, *range(_HANGUL_L, _HANGUL_LVT + 1)})
_HANGUL_JOINS: frozenset[tuple[int, int]] = frozenset(
    {(_HANGUL_L, follow) for follow in (_HANGUL_L, _HANGUL_V, _HANGUL_LV, _HANGUL_LVT)}  # GB6
    | {(lead, follow) for lead in (_HANGUL_LV, _HANGUL_V) for follow in (_HANGUL_V, _HANGUL_T)}
    | {(_HANGUL_LVT, _HANGUL_T), (_HANGUL_T, _HANGUL_T)}  # GB8
)


@lru_cache(maxsize=4096)
def _break_class(char: str) -> int:
    code = ord(char)
    if code < 0x300:  # Latin, Latin-1, IPA, spacing modifiers: only controls are special
        if code < 0x20 or 0x7F <= code < 0xA0 or code == 0xAD:
            return _CONTROL
        return _PICTO if code in (0xA9, 0xAE) else _OTHER
    if code == 0x200D:
        return _ZWJ
    if code == 0x200C or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:
        return _EXTEND  # ZWNJ, emoji skin-tone modifiers, emoji tag characters
    if 0x1F1E6 <= code <= 0x1F1FF:
        return _REGIONAL
    if 0x1100 <= code <= 0x11FF or 0xA960 <= code <= 0xA97C or 0xD7B0 <= code <= 0xD7FB:
        if code <= 0x115F or 0xA960 <= code <= 0xA97C:
            return _HANGUL_L
        if code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
            return _HANGUL_V
        return _HANGUL_T
    if 0xAC00 <= code <= 0xD7A3:
        return _HANGUL_LV if (code - 0xAC00) % 28 == 0 else _HANGUL_LVT
    category = unicodedata.category(char)
    if category in ("Mn", "Me"):
        return _EXTEND
    if category == "Mc":
        return _SPACING_MARK
    if category in _CONTROL_CATEGORIES:
        return _CONTROL
    if category == "So":
        return _PICTO
    return _OTHER


def _grapheme_clusters(text: str) -> list[str]:
    """Split ``text`` into extended grapheme clusters (see the module docstring)."""
    if not any(_break_class(char) in _JOINING for char in set(text)):
        return list(text)  # the common case (smart quotes, accents, plain emoji): no joins
    clusters: list[str] = []
    start = 0
    previous = _CONTROL  # so that the first character starts a cluster
    picto_run = False  # the current cluster ends with Extended_Pictographic Extend*
    picto_zwj = False  # ... followed by ZWJ (GB11)
    odd_regional = False  # the current cluster ends with an odd number of regional indicators
    for index, char in enumerate(text):
        current = _break_class(char)
        if previous == _CONTROL or current == _CONTROL:
            joins = False  # GB4, GB5 (CR LF stays two, as in Twilio's calculator)
        elif current in (_EXTEND, _ZWJ, _SPACING_MARK):
            joins = True  # GB9, GB9a
        elif current == _PICTO:
            joins = picto_zwj  # GB11
        elif current == _REGIONAL:
            joins = odd_regional  # GB12, GB13
        else:
            joins = (previous, current) in _HANGUL_JOINS  # GB6-GB8
        if not joins and index:
            clusters.append(text[start:index])
            start = index
        picto_zwj = current == _ZWJ and picto_run
        picto_run = current == _PICTO or (current == _EXTEND and picto_run)
        odd_regional = current == _REGIONAL and not (joins and previous == _REGIONAL)
        previous = current
    if text:
        clusters.append(text[start:])
    return clusters
