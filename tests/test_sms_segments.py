"""Tests for engine.sms_segments: GSM-7 / UCS-2 detection, segment counting and splitting."""

from __future__ import annotations

import dataclasses
import random

import pytest

from engine import sms_segments
from engine.sms_segments import NonGsmCharacter, SegmentInfo, analyse, is_gsm7, split_segments

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039eÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "\f^{}\\[~]|€"

GRINNING = "\U0001f600"  # 😀, a surrogate pair in UTF-16
WINK = "\U0001f61c"  # 😜
FLAG_IT = "\U0001f1ee\U0001f1f9"  # 🇮🇹, two regional indicators: one character, 4 units
RAINBOW_FLAG = "\U0001f3f3\ufe0f\u200d\U0001f308"  # 🏳️‍🌈: 4 code points, 6 units
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧: 5 code points, 8 units


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def septets(text: str) -> int:
    return sum(2 if char in GSM_EXTENSION else 1 for char in text)


def message_bits(info: SegmentInfo) -> int:
    """Twilio's ``messageSize``: payload bits, without User Data Headers."""
    return info.units * (7 if info.encoding == "GSM-7" else 16)


def total_bits(info: SegmentInfo) -> int:
    """Twilio's ``totalSize``: payload plus a 6-octet UDH in every part of a long message."""
    return message_bits(info) + (6 * 8 * info.segments if info.segments > 1 else 0)


def assert_consistent(text: str) -> list[str]:
    """The split agrees with analyse() and respects the per-part limits."""
    info = analyse(text)
    parts = split_segments(text)
    assert "".join(parts) == text
    assert len(parts) == info.segments
    size = septets if info.encoding == "GSM-7" else utf16_units
    assert sum(size(part) for part in parts) == info.units
    if len(parts) > 1:
        limit = 153 if info.encoding == "GSM-7" else 67
        assert all(0 < size(part) <= limit for part in parts)
    for part in parts:  # no part starts or ends inside a surrogate pair
        part.encode("utf-16-le")
    return parts


# --- Published vectors from Twilio's calculator -------------------------------------------
#
# https://github.com/TwilioDevEd/message-segment-calculator, tests/index.test.js
# ("Basic tests", "GSM-7 Escape Characters", "One grapheme UCS-2 characters", "Special
# tests", "Line break styles tests"), tests/segments.test.js, tests/methods.test.js and
# tests/charDetails.test.js. Twilio's bodies are runs of the digits "1234567890..." (after
# the leading emoji they start at "2"); they are rebuilt from DIGITS so that the lines stay
# short — e.g. DIGITS[:160] is the body of "GSM-7 in one segment". Invisible code points
# (ZWJ, combining accents) are written as escapes.

DIGITS = "1234567890" * 40

# (description, body, encoding, segments, messageSize, totalSize, characters, unicodeScalars)
TWILIO_BASIC = [
    ("GSM-7 in one segment", DIGITS[:160], "GSM-7", 1, 1120, 1120, 160, 160),
    ("GSM-7 in two segments", DIGITS[:161], "GSM-7", 2, 1127, 1223, 161, 161),
    ("GSM-7 in three segments", DIGITS[:307], "GSM-7", 3, 2149, 2293, 307, 307),
    ("UCS-2 message in one segment", WINK + DIGITS[1:69], "UCS-2", 1, 1120, 1120, 69, 69),
    ("UCS-2 message in two segments", WINK + DIGITS[1:70], "UCS-2", 2, 1136, 1232, 70, 70),
    ("UCS-2 message in three segments", WINK + DIGITS[1:134], "UCS-2", 3, 2160, 2304, 134, 134),
    ("UCS-2 flag, one segment", FLAG_IT + DIGITS[1:67], "UCS-2", 1, 1120, 1120, 67, 68),
    ("UCS-2 flag, two segments", FLAG_IT + DIGITS[1:68], "UCS-2", 2, 1136, 1232, 68, 69),
    ("UCS-2 ZWJ flag, one segment", RAINBOW_FLAG + DIGITS[1:65], "UCS-2", 1, 1120, 1120, 65, 68),
    ("UCS-2 ZWJ flag, two segments", RAINBOW_FLAG + DIGITS[1:66], "UCS-2", 2, 1136, 1232, 66, 69),
]


@pytest.mark.parametrize(
    ("body", "encoding", "segments", "message_size", "total_size", "characters", "scalars"),
    [pytest.param(*row[1:], id=row[0]) for row in TWILIO_BASIC],
)
def test_twilio_basic_vectors(
    body: str,
    encoding: str,
    segments: int,
    message_size: int,
    total_size: int,
    characters: int,
    scalars: int,
) -> None:
    info = analyse(body)
    assert info.encoding == encoding
    assert info.segments == segments
    assert message_bits(info) == message_size
    assert total_bits(info) == total_size
    assert info.characters == characters
    assert len(body) == scalars
    assert_consistent(body)


# Twilio's GSM7EscapeChars (tests/index.test.js): the form feed is added here.
@pytest.mark.parametrize("escape_char", ["|", "^", "€", "{", "}", "[", "]", "~", "\\", "\f"])
def test_twilio_escape_character_vectors(escape_char: str) -> None:
    one = analyse(escape_char + DIGITS[:158])
    assert (one.encoding, one.segments) == ("GSM-7", 1)
    assert (message_bits(one), total_bits(one)) == (1120, 1120)

    two = analyse(escape_char + DIGITS[:159])
    assert (two.encoding, two.segments) == ("GSM-7", 2)
    assert (message_bits(two), total_bits(two)) == (1127, 1223)


@pytest.mark.parametrize("char", ["Á", "Ú", "ú", "ç", "í", "Í", "ó", "Ó"])
def test_twilio_one_grapheme_ucs2_vectors(char: str) -> None:
    for count, segments in ((70, 1), (71, 2)):
        info = analyse(char * count)
        assert (info.encoding, info.segments) == ("UCS-2", segments)
        assert len(info.non_gsm) == count
        assert not is_gsm7(char)


def test_twilio_issue_18_gsm_extension_chars_in_ucs2() -> None:
    # "Special tests": in UCS-2 an extension character costs one unit, not two.
    assert analyse(GRINNING + "]" * 68).segments == 1
    assert analyse(GRINNING + "]" * 69).segments == 2


def test_twilio_issue_57_extension_chars_count_one_unit_in_ucs2() -> None:
    # tests/charDetails.test.js
    message = "||||||||||||||||||||||||{||||||||||||||||||||||||||||∞||||||||||^|||||"
    info = analyse(message)
    assert info.encoding == "UCS-2"
    assert info.characters == 70
    assert info.units == 70
    assert info.segments == 1


@pytest.mark.parametrize(
    ("message", "characters"),
    [("\rabcde\r\n123", 11), ("\nabcde\n\n123\n", 12)],
)
def test_twilio_line_break_vectors(message: str, characters: int) -> None:
    info = analyse(message)
    assert info.encoding == "GSM-7"
    assert info.characters == characters


def test_twilio_crlf_costs_an_extra_segment() -> None:
    # "Real-world message: CRLF bills 2 segments, LF bills 1" (issue #67 / PR #52).
    crlf = (
        "Ce weekend c'est Big Kiff ! Découvrez vite 4 nouveaux menus à partager:\r\n"
        "l.dominos.fr/MqGKjT0Vi2\r\nConditions sur le site Domino's.\r\n"
        "STOP : l.dominos.fr/oIv05Yymdm"
    )
    lf = crlf.replace("\r\n", "\n")
    assert (analyse(crlf).characters, analyse(crlf).segments) == (162, 2)
    assert (analyse(lf).characters, analyse(lf).segments) == (159, 1)


def test_twilio_triple_accent_vectors() -> None:
    # 'e' followed by three combining acute accents: one character, four scalars (issue #17).
    triple = "e\u0301\u0301\u0301"
    assert len(triple) == 4
    assert analyse(triple).characters == 1
    assert analyse(triple + "a" * 66).segments == 1
    assert analyse(triple + "a" * 67).segments == 2


def test_twilio_segments_vectors() -> None:
    # tests/segments.test.js: the last of three parts holds a single character.
    gsm = split_segments(DIGITS[:307])
    assert len(gsm) == 3
    assert gsm[2] == "7"
    ucs2 = split_segments(WINK + DIGITS[1:134])
    assert len(ucs2) == 3
    assert ucs2[2] == "4"


def test_twilio_get_non_gsm_characters_vector() -> None:
    # tests/methods.test.js
    assert [item.char for item in analyse("más").non_gsm] == ["á"]


def test_twilio_char_details_vectors() -> None:
    # tests/charDetails.test.js: 161 'A' split after the 153rd; '@😀' is UCS-2; '' is empty.
    parts = split_segments("A" * 161)
    assert [len(part) for part in parts] == [153, 8]
    assert analyse("@" + GRINNING).encoding == "UCS-2"
    assert [item.char for item in analyse("@" + GRINNING).non_gsm] == [GRINNING]
    assert analyse("").characters == 0


# --- Alphabet -------------------------------------------------------------------------------


def test_alphabet_sizes() -> None:
    assert len(GSM_BASIC) == len(set(GSM_BASIC)) == 127
    assert len(GSM_EXTENSION) == 10
    assert not set(GSM_BASIC) & set(GSM_EXTENSION)


def test_every_basic_character_costs_one_septet() -> None:
    for char in GSM_BASIC:
        info = analyse(char)
        assert (info.encoding, info.units, info.characters) == ("GSM-7", 1, 1), repr(char)
    info = analyse(GSM_BASIC)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", 127, 1)


@pytest.mark.parametrize("char", list(GSM_EXTENSION))
def test_every_extension_character_costs_two_septets(char: str) -> None:
    info = analyse(char)
    assert (info.encoding, info.units, info.characters, info.non_gsm) == ("GSM-7", 2, 2, ())
    assert analyse("x" * 158 + char).segments == 1
    assert analyse("x" * 159 + char).segments == 2
    assert analyse(char * 80).segments == 1
    assert analyse(char * 81).segments == 2


@pytest.mark.parametrize(
    "char",
    [
        "`",  # backtick
        "\t",
        "\x1b",  # ESC itself is not a character
        "ç",  # only the capital Ç is in the alphabet
        "á",
        "\u2126",  # OHM SIGN, a look-alike of GREEK CAPITAL LETTER OMEGA (which is GSM)
        "\u00a0",
        "\u2019",
        "°",
        GRINNING,
    ],
)
def test_characters_outside_gsm7(char: str) -> None:
    assert not is_gsm7(char)
    assert not is_gsm7("hello " + char)
    assert analyse(char).encoding == "UCS-2"


def test_is_gsm7() -> None:
    assert is_gsm7("")
    assert is_gsm7("Hi Ana, see you Tue 3:30pm @ Main St. Reply C to confirm {ok} €5")
    assert not is_gsm7("Hi Ana, see you Tue 3:30pm — reply C")


# --- GSM-7 boundaries -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (159, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4), (1530, 10)],
)
def test_gsm7_boundaries(length: int, segments: int) -> None:
    info = analyse("a" * length)
    assert (info.encoding, info.segments, info.units, info.characters) == (
        "GSM-7",
        segments,
        length,
        length,
    )
    parts = assert_consistent("a" * length)
    if segments > 1:
        assert [len(part) for part in parts[:-1]] == [153] * (segments - 1)


def test_escape_pair_is_never_split_across_parts() -> None:
    text = "a" * 152 + "€" + "b" * 10  # 164 septets: the € would straddle the boundary
    assert split_segments(text) == ["a" * 152, "€" + "b" * 10]
    assert analyse(text).segments == 2
    assert_consistent(text)


def test_escape_pair_at_boundary_can_cost_a_segment() -> None:
    # 306 septets = 2 × 153, but the € cannot start at septet 153: three parts.
    text = "a" * 152 + "€" + "a" * 152
    info = analyse(text)
    assert info.units == 306
    assert info.segments == 3
    assert split_segments(text) == ["a" * 152, "€" + "a" * 151, "a"]


def test_escape_pair_ending_exactly_at_boundary() -> None:
    text = "a" * 151 + "€" + "b" * 10  # the pair fills septets 152-153 of the first part
    assert split_segments(text) == ["a" * 151 + "€", "b" * 10]


def test_all_extension_text_in_several_parts() -> None:
    text = "{" * 200  # 400 septets; each part holds 76 pairs (152 septets)
    parts = assert_consistent(text)
    assert [len(part) for part in parts] == [76, 76, 48]


# --- UCS-2 boundaries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(length: int, segments: int) -> None:
    text = "\u2019" + "a" * (length - 1)
    info = analyse(text)
    assert (info.encoding, info.segments, info.units, info.characters) == (
        "UCS-2",
        segments,
        length,
        length,
    )
    parts = assert_consistent(text)
    if segments > 1:
        assert [len(part) for part in parts[:-1]] == [67] * (segments - 1)


def test_surrogate_pair_is_never_split_at_the_67_unit_boundary() -> None:
    text = "a" * 66 + GRINNING + "a" * 10  # the emoji would occupy units 67 and 68
    assert analyse(text).units == 78
    assert split_segments(text) == ["a" * 66, GRINNING + "a" * 10]
    assert_consistent(text)


def test_surrogate_pair_ending_exactly_at_the_67_unit_boundary() -> None:
    text = "a" * 65 + GRINNING + "a" * 5
    assert split_segments(text) == ["a" * 65 + GRINNING, "a" * 5]


def test_single_ucs2_segment_holds_70_units_including_emoji() -> None:
    assert analyse(GRINNING * 35).segments == 1  # 70 units
    assert analyse(GRINNING * 36).segments == 2  # 72 units: 33 + 3 emoji
    assert [len(part) for part in split_segments(GRINNING * 36)] == [33, 3]


def test_emoji_only_text_needs_more_parts_than_units_suggest() -> None:
    # 134 units = 2 × 67, but a part holds only 33 emoji (66 units).
    info = analyse(GRINNING * 67)
    assert (info.units, info.characters, info.segments) == (134, 67, 3)
    assert [len(part) for part in split_segments(GRINNING * 67)] == [33, 33, 1]


def test_grapheme_cluster_is_kept_in_one_part() -> None:
    text = "a" * 64 + FAMILY + "a" * 10  # FAMILY is 8 units; only 3 are left in part one
    info = analyse(text)
    assert (info.units, info.characters, info.segments) == (82, 75, 2)
    assert split_segments(text) == ["a" * 64, FAMILY + "a" * 10]


def test_oversized_grapheme_cluster_falls_back_to_code_points() -> None:
    text = "e" + "\u0301" * 100 + "x"  # one "character" of 101 units
    info = analyse(text)
    assert info.characters == 2
    parts = assert_consistent(text)
    assert [utf16_units(part) for part in parts] == [67, 35]


# --- characters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "characters"),
    [
        ("", 0),
        ("hello", 5),
        ("€", 2),  # GSM-7: Twilio counts septets, so an extension character counts 2
        ("{ok}", 6),
        ("\u2019€", 2),  # UCS-2: the € is one character again
        (GRINNING, 1),
        (FLAG_IT + FLAG_IT, 2),
        (FAMILY, 1),
        (RAINBOW_FLAG, 1),
        ("\U0001f44d\U0001f3fd", 1),  # thumbs up + skin tone modifier
        ("1\ufe0f\u20e3", 1),  # keycap 1
        ("\u2764\ufe0f", 1),  # red heart with emoji presentation selector
        ("\r\n" + GRINNING, 3),  # CR LF counts 2, as in Twilio
        ("한국어", 3),
        ("\u1100\u1161\u11a8", 1),  # conjoining Hangul jamo: one syllable
        ("a\u200db", 2),  # ZWJ between letters joins only to the left
        ("\U0001f1ee\U0001f1f9\U0001f1ee", 2),  # flag + a lone regional indicator
    ],
)
def test_characters(text: str, characters: int) -> None:
    assert analyse(text).characters == characters


# --- Characters that force UCS-2 ---------------------------------------------------------


def test_smart_quote_position_name_and_replacement() -> None:
    text = "Hi Ana, it’s time for your PT visit"
    info = analyse(text)
    assert info.encoding == "UCS-2"
    assert info.non_gsm == (
        NonGsmCharacter(
            char="\u2019", position=10, name="RIGHT SINGLE QUOTATION MARK", replacement="'"
        ),
    )
    assert text[info.non_gsm[0].position] == "\u2019"
    assert info.non_gsm[0].column == 11
    assert info.non_gsm[0].describe() == (
        "the character \u2019 (RIGHT SINGLE QUOTATION MARK) at column 11 forces UCS-2; "
        'use "\'" instead'
    )


def test_every_occurrence_is_reported_in_order() -> None:
    text = "“See you at 3” — Ana…"
    found = [(item.char, item.position, item.replacement) for item in analyse(text).non_gsm]
    assert found == [
        ("\u201c", 0, '"'),
        ("\u201d", 13, '"'),
        ("\u2014", 15, "-"),
        ("\u2026", 20, "..."),
    ]


def test_positions_are_python_string_indices_not_utf16_offsets() -> None:
    text = GRINNING + "ab\u2019"
    positions = [item.position for item in analyse(text).non_gsm]
    assert positions == [0, 3]


@pytest.mark.parametrize(
    ("char", "name", "replacement"),
    [
        ("\u2018", "LEFT SINGLE QUOTATION MARK", "'"),
        ("\u2019", "RIGHT SINGLE QUOTATION MARK", "'"),
        ("\u201c", "LEFT DOUBLE QUOTATION MARK", '"'),
        ("\u201d", "RIGHT DOUBLE QUOTATION MARK", '"'),
        ("\u2013", "EN DASH", "-"),
        ("\u2014", "EM DASH", "-"),
        ("\u2026", "HORIZONTAL ELLIPSIS", "..."),
        ("\u00a0", "NO-BREAK SPACE", " "),
        ("\u202f", "NARROW NO-BREAK SPACE", " "),
        ("\u2022", "BULLET", "-"),
        ("\u00bd", "VULGAR FRACTION ONE HALF", "1/2"),
        ("\u200b", "ZERO WIDTH SPACE", ""),
        ("`", "GRAVE ACCENT", "'"),
        ("\t", "U+0009", " "),
        # from the compatibility decomposition
        ("á", "LATIN SMALL LETTER A WITH ACUTE", "a"),
        ("ç", "LATIN SMALL LETTER C WITH CEDILLA", "c"),
        ("\ufb01", "LATIN SMALL LIGATURE FI", "fi"),
        ("\u2122", "TRADE MARK SIGN", "TM"),
        ("\uff21", "FULLWIDTH LATIN CAPITAL LETTER A", "A"),
        ("\u0301", "COMBINING ACUTE ACCENT", ""),
        # no faithful replacement
        (GRINNING, "GRINNING FACE", None),
        ("°", "DEGREE SIGN", None),
        ("∞", "INFINITY", None),
        ("\u00a8", "DIAERESIS", None),  # decomposes to space + combining mark
        ("\u0416", "CYRILLIC CAPITAL LETTER ZHE", None),
        ("\x1b", "U+001B", None),
    ],
)
def test_non_gsm_name_and_replacement(char: str, name: str, replacement: str | None) -> None:
    (item,) = analyse(char).non_gsm
    assert (item.char, item.position, item.name, item.replacement) == (char, 0, name, replacement)


def test_replacement_table_is_all_gsm7() -> None:
    for char, replacement in sms_segments._REPLACEMENTS.items():
        assert not is_gsm7(char), repr(char)
        assert is_gsm7(replacement), repr(char)


def test_replacing_every_suggestion_gives_gsm7() -> None:
    text = "“Don’t miss it” – your visit… Tue\u00a03pm • ½ hour"
    info = analyse(text)
    fixed = list(text)
    for item in info.non_gsm:
        assert item.replacement is not None
        fixed[item.position] = item.replacement
    assert analyse("".join(fixed)).encoding == "GSM-7"
    assert "".join(fixed) == '"Don\'t miss it" - your visit... Tue 3pm - 1/2 hour'


def test_describe_wording() -> None:
    (emoji,) = analyse(GRINNING).non_gsm
    assert emoji.describe() == (
        f"the character {GRINNING} (GRINNING FACE) at column 1 forces UCS-2; "
        "there is no GSM-7 equivalent"
    )
    (nbsp,) = analyse("\u00a0").non_gsm
    assert nbsp.describe().startswith("the character U+00A0 (NO-BREAK SPACE) at column 1")
    (zwsp,) = analyse("\u200b").non_gsm
    assert zwsp.describe().endswith("forces UCS-2; delete it")
    (tab,) = analyse("\t").non_gsm
    assert tab.describe().startswith("the character U+0009 at column 1")
    assert analyse("e\u0301").non_gsm[0].describe().startswith("the character \u25cc\u0301 (")


def test_gsm7_text_reports_no_non_gsm_characters() -> None:
    assert analyse("Reply Y {yes} or N [no] – €0").non_gsm != ()
    assert analyse("Reply Y {yes} or N [no] - €0").non_gsm == ()


def test_lone_surrogate_is_counted_not_crashed_on() -> None:
    info = analyse("ok\ud800")
    assert (info.encoding, info.units, info.characters, info.segments) == ("UCS-2", 3, 3, 1)
    assert info.non_gsm[0].name == "U+D800"
    assert split_segments("ok\ud800") == ["ok\ud800"]


# --- Empty text, as_dict, dataclasses -----------------------------------------------------


def test_empty_text_is_one_gsm7_segment() -> None:
    assert analyse("") == SegmentInfo(
        encoding="GSM-7", segments=1, characters=0, units=0, non_gsm=()
    )
    assert split_segments("") == [""]


def test_as_dict_has_exactly_three_keys() -> None:
    assert analyse("Hi €").as_dict() == {"encoding": "GSM-7", "segments": 1, "characters": 5}
    as_dict = analyse("Hi " + GRINNING).as_dict()
    assert list(as_dict) == ["encoding", "segments", "characters"]
    assert as_dict == {"encoding": "UCS-2", "segments": 1, "characters": 4}


def test_dataclasses_are_frozen() -> None:
    info = analyse("Don’t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.segments = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.non_gsm[0].position = 0  # type: ignore[misc]
    assert hash(info) == hash(analyse("Don’t"))


def test_single_part_text_is_returned_whole() -> None:
    assert split_segments("Hi") == ["Hi"]
    assert split_segments("a" * 158 + "€") == ["a" * 158 + "€"]
    assert split_segments(GRINNING * 35) == [GRINNING * 35]


# --- Randomised consistency ----------------------------------------------------------------

POOLS = [
    "abcdefghij 0123456789.,!?",
    GSM_BASIC,
    GSM_EXTENSION,
    "\u2019\u201c\u201d\u2014\u2026\u00a0á",
    GRINNING + WINK + "\u0301\ufe0f\u200d",
]


@pytest.mark.parametrize("seed", range(40))
def test_random_texts_are_consistent(seed: int) -> None:
    rng = random.Random(seed)
    pools = rng.sample(POOLS, rng.randint(1, len(POOLS)))
    alphabet = "".join(pools)
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))
    info = analyse(text)
    assert info.encoding == ("GSM-7" if is_gsm7(text) else "UCS-2")
    expected_units = septets(text) if info.encoding == "GSM-7" else utf16_units(text)
    assert info.units == expected_units
    assert [item.position for item in info.non_gsm] == [
        index for index, char in enumerate(text) if not is_gsm7(char)
    ]
    assert_consistent(text)
