"""Reading a patient's text: an answer to the 0-10 question, or a complaint.

A reply to the satisfaction question (the step marked ``asks: score``) is a score when
the whole message is one: ``8``, ``8/10``, ``8 out of 10``, ``eight``, ``ocho``,
``8 de 10``. Anything else is kept as free text for staff. Any free text is also read
for words of complaint (English and Spanish); one found opens a recovery case — a
false alarm costs a member of staff a minute, a missed complaint costs a patient.
"""

from __future__ import annotations

import re
import unicodedata

NUMBER_WORDS = {
    # English
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10,
    # Spanish (accents are dropped before matching)
    "cero": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6,
    "siete": 7, "ocho": 8, "nueve": 9, "diez": 10,
}
_NUMBER = r"(\d{1,2}|" + "|".join(NUMBER_WORDS) + r")"
_OUT_OF = r"(?:\s*/\s*|\s+out\s+of\s+|\s+of\s+|\s+de\s+|\s+sobre\s+)(?:10|ten|diez)"
_SCORE = re.compile(rf"^{_NUMBER}(?:{_OUT_OF})?$")

# Words and phrases that read as a complaint. Matched on whole words, accents dropped.
COMPLAINT_PHRASES = (
    # English
    "complain", "complaint", "terrible", "awful", "horrible", "rude", "unprofessional",
    "disappointed", "disappointing", "unhappy", "not happy", "upset", "angry", "furious",
    "worst", "waited", "waiting forever", "too long", "never again", "not coming back",
    "won't be back", "wont be back", "refund", "overcharged", "ignored", "nobody called",
    "no one called", "hurt more", "worse", "bad experience", "poor service",
    # Spanish
    "queja", "quejarme", "terrible", "horrible", "pesimo", "pesima", "grosero", "grosera",
    "molesto", "molesta", "enojado", "enojada", "decepcionado", "decepcionada",
    "mal servicio", "mala experiencia", "nunca mas", "no vuelvo", "reembolso",
    "espere mucho", "me ignoraron", "peor",
)
_COMPLAINT = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in COMPLAINT_PHRASES) + r")",
                        re.IGNORECASE)


def _plain(text: str) -> str:
    """Lower case, accents dropped, spaces collapsed, end punctuation trimmed."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = re.sub(r"\s+", " ", folded.strip().lower())
    return folded.strip(" .!?,;:'\"¡¿")


def parse_score(body: str) -> int | None:
    """The 0-10 score ``body`` gives, or None if it is not just a score."""
    match = _SCORE.match(_plain(body))
    if match is None:
        return None
    raw = match.group(1)
    value = int(raw) if raw.isdigit() else NUMBER_WORDS[raw]
    return value if 0 <= value <= 10 else None


_NEGATION = re.compile(r"\b(?:no|not|never|nothing to|without|wasn'?t|isn'?t|didn'?t|"
                       r"wasnt|isnt|didnt|sin|ningun|ninguna|nada de)(?: [\w']+){0,2}\s*$")


def reads_as_complaint(body: str) -> str | None:
    """The complaint phrase found in ``body``, or None ("no complaints" is not one)."""
    text = _plain(body)
    for match in _COMPLAINT.finditer(text):
        if not _NEGATION.search(text[:match.start()]):
            return match.group(0)
    return None
