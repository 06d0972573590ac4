"""Text normalisers applied to references and hypotheses at scoring time (never at training).

``get_normalizer(name)`` returns a ``str -> str`` function. Every normaliser ends with single
spaces between words and no leading/trailing space. Names:

- ``none``: identity.
- ``basic``: multilingual. NFKC, lowercase, bracketed annotations (``[noise]``, ``(laughs)``,
  ``<unk>``) dropped, punctuation and symbols (Unicode categories P*, S*) replaced by spaces.
  Combining marks (category M) are KEPT: in Devanagari they are the vowel signs and the virama.
- ``whisper_basic``: the same, but also deleting category-M characters, as Whisper's
  BasicTextNormalizer does. Kept only to show how it wrecks Hindi WER (``"हिंदी" -> "ह द"``).
- ``english``: ``basic`` plus contractions, a few spelling variants, fillers, titles, currency
  and percent signs, and spelled-out numbers folded to digits ("twenty-three" -> "23",
  "one hundred and five" -> "105", "twenty first" -> "21st", "three point five" -> "3.5").
- ``hindi``: the balance argued for in paper 1 (see ``hindi_normalizer``).
- ``bambara``: Latin orthography; keeps ɛ ɔ ɲ ŋ, French accents and tone marks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# ------------------------------------------------------------------------------------ shared
_BRACKETS = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_SPACES = re.compile(r"\s+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def _collapse(s: str) -> str:
    return _SPACES.sub(" ", s).strip()


def _drop_symbols(s: str, drop_marks: bool = False, keep: str = "") -> str:
    """Replace every P*/S* character (and M* if ``drop_marks``) by a space, except those in ``keep``."""
    cats = "PSM" if drop_marks else "PS"
    return "".join(" " if unicodedata.category(c)[0] in cats and c not in keep else c for c in s)


def _inner_apostrophes_only(s: str) -> str:
    """Keep an apostrophe only between two word characters ("l'école", "john's")."""
    return re.sub(r"(?<!\w)'|'(?!\w)", " ", s)


def identity(s: str) -> str:
    return s


def basic(s: str) -> str:
    """Multilingual normaliser that keeps combining marks (see module docstring)."""
    s = unicodedata.normalize("NFKC", s).lower()
    return _collapse(_drop_symbols(_BRACKETS.sub(" ", s)))


def whisper_basic(s: str) -> str:
    """Whisper-BasicTextNormalizer-like behaviour: ALSO deletes combining marks (harmful for Indic)."""
    s = unicodedata.normalize("NFKC", s).lower()
    return _collapse(_drop_symbols(_BRACKETS.sub(" ", s), drop_marks=True))


# ------------------------------------------------------------------------------------- Hindi
_NUKTA, _CHANDRABINDU, _ANUSVARA = "\u093c", "\u0901", "\u0902"
_DEVANAGARI_DIGITS = str.maketrans({chr(0x0966 + i): str(i) for i in range(10)})
_ZERO_WIDTH = str.maketrans({"\u200c": None, "\u200d": None, "\ufeff": None})
_FLAP_NUKTA = re.compile("(?<![\u0921\u0922])\u093c")  # nukta not after ड / ढ


def hindi_normalizer(keep_flap_nukta: bool = False) -> Callable[[str], str]:
    """Build the Hindi normaliser. Steps, in order:

    1. NFD, then delete the nukta U+093C. NFD splits the precomposed nukta letters
       क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़ (U+0958-U+095F) and ऩ ऱ ऴ into base + nukta, so all of them map to
       their base letter (क़ -> क, ज़ -> ज, फ़ -> फ). Choice: Common Voice transcripts and ASR
       outputs write the Perso-Arabic loan sounds with and without nukta interchangeably, so
       keeping it would count spelling variation as recognition errors (over-preservation).
       ड़/ढ़ (retroflex flaps) are real Hindi phonemes, not loan marks: merging them with ड/ढ
       is an over-simplification that ``keep_flap_nukta=True`` avoids.
    2. Chandrabindu U+0901 -> anusvara U+0902 (written interchangeably: हँसना / हंसना).
    3. Delete ZWJ U+200D, ZWNJ U+200C (and BOM): invisible, they change only the glyph shape.
    4. Devanagari digits ०-९ -> 0-9. Latin letters (code-mixing) lowercased.
    5. Danda । U+0964, double danda ॥ U+0965, the abbreviation sign ॰ and all other
       punctuation/symbols (Unicode P*, S*) -> space.
    6. Kept: vowel signs (matras), virama/halant U+094D, anusvara, visarga, candra vowels,
       avagraha. NFC at the end.
    """

    def norm(s: str) -> str:
        s = unicodedata.normalize("NFD", s)
        s = _FLAP_NUKTA.sub("", s) if keep_flap_nukta else s.replace(_NUKTA, "")
        s = s.replace(_CHANDRABINDU, _ANUSVARA).translate(_ZERO_WIDTH).translate(_DEVANAGARI_DIGITS)
        s = _drop_symbols(_BRACKETS.sub(" ", s.lower()))
        return unicodedata.normalize("NFC", _collapse(s))

    return norm


# ----------------------------------------------------------------------------------- Bambara
def bambara(s: str) -> str:
    """Bambara: NFC, lowercase (Ɛ->ɛ, Ɔ->ɔ, Ɲ->ɲ, Ŋ->ŋ), bracketed annotations dropped,
    punctuation/symbols -> space, apostrophes unified to ' and kept inside words (French
    elision "l'école", Bambara "k'a"). Accents (é è à ç ê ...) and combining tone marks kept.
    The old orthography (è/ò for ɛ/ɔ) is NOT mapped: that would corrupt French words."""
    s = unicodedata.normalize("NFC", s).lower().translate(_APOSTROPHES)
    s = _drop_symbols(_BRACKETS.sub(" ", s), keep="'")
    return unicodedata.normalize("NFC", _collapse(_inner_apostrophes_only(s)))


# ----------------------------------------------------------------------------------- English
_CONTRACTIONS = [  # applied in order, on lowercase text with ASCII apostrophes
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"), (r"\bain't\b", "is not"), (r"n't\b", " not"),
    (r"'re\b", " are"), (r"'ll\b", " will"), (r"'ve\b", " have"), (r"\bi'm\b", "i am"),
]  # 's and 'd are ambiguous (is/has, had/would) and left as written
_SPELLING = {
    "colour": "color", "colours": "colors", "favourite": "favorite", "honour": "honor",
    "neighbour": "neighbor", "neighbours": "neighbors", "labour": "labor", "behaviour": "behavior",
    "centre": "center", "theatre": "theater", "metre": "meter", "metres": "meters",
    "realise": "realize", "realised": "realized", "organise": "organize", "organised": "organized",
    "recognise": "recognize", "analyse": "analyze", "travelled": "traveled", "travelling": "traveling",
    "grey": "gray", "defence": "defense", "licence": "license", "programme": "program",
    "ok": "okay", "mr": "mister", "mrs": "missus", "dr": "doctor", "prof": "professor",
}
_FILLERS = {"uh", "um", "umm", "uhm", "hmm", "hm", "mm", "mmm", "mhm", "erm"}
_CURRENCY = [(r"\$\s*(\d[\d,]*(?:\.\d+)?)", r"\1 dollars"), (r"£\s*(\d[\d,]*(?:\.\d+)?)", r"\1 pounds"),
             (r"€\s*(\d[\d,]*(?:\.\d+)?)", r"\1 euros")]

_ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_TEENS = {w: i + 10 for i, w in enumerate(
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split())}
_ORDINALS.update({w: 10 * (i + 2) for i, w in enumerate(
    "twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split())})
_ORDINALS.update({"hundredth": 100, "thousandth": 1000, "millionth": 10**6})


def _word_value(w: str) -> tuple[str, int] | None:
    """(kind, value) of a number word or a plain digit string (kind "digits"), else None."""
    for kind, table in (("ones", _ONES), ("teens", _TEENS), ("tens", _TENS), ("scale", _SCALES)):
        if w in table:
            return kind, table[w]
    if w == "hundred":
        return "hundred", 100
    if w.isascii() and w.isdigit() and (w == "0" or not w.startswith("0")):
        return "digits", int(w)
    return None


def _ordinal(v: int) -> str:
    suffix = "th" if 11 <= v % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(v % 10, "th")
    return f"{v}{suffix}"


def _parse_number(words: list[str], i: int) -> tuple[str | None, int]:
    """Longest spelled-out number starting at ``words[i]``: (digits, index after it), or (None, i).

    Grammar: groups below 1000 ("twenty three", "five hundred [and] six") joined by scale words in
    decreasing order ("two million [and] five thousand"); "a hundred"/"a thousand" = 1 x;
    "X point D D" is a decimal; an ordinal word ends the number ("twenty first" -> 21st; a bare
    "second" is left alone, it is also a unit of time); two two-digit groups make a year
    ("nineteen ninety nine" -> 1999, "nineteen oh five" -> 1905). A ones word after a ones word
    starts a new number, so spoken digit strings stay digit strings ("one two" -> "1 2"). A digit
    token can only be followed by "hundred" or a scale word ("3 million" -> 3000000).
    """
    total, group, last, last_scale, year_hi, n = 0, 0, None, float("inf"), None, len(words)
    k = i
    if k + 1 < n and words[k] == "a" and words[k + 1] in ("hundred", *_SCALES):
        group, last, k = 1, "ones", k + 1
    while k < n:
        w, kv = words[k], _word_value(words[k])
        nxt = words[k + 1] if k + 1 < n else ""
        open_slot = last in (None, "hundred", "scale", "and")
        year_start = year_hi is None and total == 0 and last in ("ones", "teens", "tens") and 11 <= group <= 99
        if w in _ORDINALS:
            v = _ORDINALS[w]
            if (open_slot and v < 100 and not (last is None and w == "second")) or \
                    (last == "tens" and v < 10 and group % 10 == 0):
                value = total + group + v
            elif v >= 100 and last in ("ones", "teens", "tens", "hundred", "digits") and year_hi is None:
                value = (total + group) * v
            else:
                break
            return _ordinal(value if year_hi is None else year_hi * 100 + value), k + 1
        if w == "and" and last in ("hundred", "scale") and nxt in (*_ONES, *_TEENS, *_TENS):
            last, k = "and", k + 1
            continue
        if w == "oh" and year_start and nxt in _ONES and nxt != "zero":
            year_hi, group, last, k = group, 0, "tens", k + 1
            continue
        if w == "point" and last not in (None, "and") and nxt in _ONES:
            digits, k = [], k + 1
            while k < n and words[k] in _ONES:
                digits.append(str(_ONES[words[k]]))
                k += 1
            whole = total + group if year_hi is None else year_hi * 100 + group
            return f"{whole}.{''.join(digits)}", k
        if kv is None:
            break
        kind, v = kv
        if kind in ("teens", "tens") and year_start:
            year_hi, group, last = group, v, kind
        elif kind == "ones" and (open_slot or (last == "tens" and group % 10 == 0)):
            group, last = group + v, "ones"
        elif kind in ("teens", "tens") and open_slot:
            group, last = group + v, kind
        elif kind == "digits" and last is None:
            group, last = v, "digits"
        elif kind == "hundred" and last in ("ones", "teens", "tens", "digits") and 0 < group < 100 \
                and year_hi is None:
            group, last = group * 100, "hundred"
        elif kind == "scale" and last in ("ones", "teens", "tens", "digits", "hundred") and group > 0 \
                and v < last_scale and year_hi is None:
            total, group, last, last_scale = total + group * v, 0, "scale", v
        else:
            break
        k += 1
    if k == i or last is None:
        return None, i
    return str(year_hi * 100 + group if year_hi is not None else total + group), k


def _fold_numbers(words: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(words):
        num, j = _parse_number(words, i)
        if num is None:
            out.append(words[i])
            i += 1
        else:
            out.append(num)
            i = j
    return out


def english(s: str) -> str:
    """English normaliser in the spirit of Whisper's EnglishTextNormalizer (own implementation).

    lowercase; bracketed annotations dropped; contractions expanded (won't -> will not, n't ->
    not, 're/'ll/'ve, i'm); "$5" -> "5 dollars", "%" -> " percent", "&" -> " and "; digit-group
    commas removed (1,000 -> 1000); punctuation/symbols -> space (apostrophes inside words and
    decimal points between digits kept); British spellings and titles (mr -> mister) mapped;
    fillers (uh, um, hmm, ...) removed; spelled-out numbers -> digits (see ``_parse_number``).
    """
    s = unicodedata.normalize("NFKC", s).lower().translate(_APOSTROPHES)
    s = _BRACKETS.sub(" ", s)
    for pat, rep in _CONTRACTIONS + _CURRENCY:
        s = re.sub(pat, rep, s)
    s = s.replace("%", " percent ").replace("&", " and ")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)
    s = _inner_apostrophes_only(_drop_symbols(s, keep="'."))
    words = [_SPELLING.get(w, w) for w in s.split() if w not in _FILLERS]
    return " ".join(_fold_numbers(words))


# ------------------------------------------------------------------------------------ lookup
_NORMALIZERS: dict[str, Callable[[], Callable[[str], str]]] = {
    "none": lambda: identity,
    "basic": lambda: basic,
    "whisper_basic": lambda: whisper_basic,
    "english": lambda: english,
    "hindi": hindi_normalizer,
    "bambara": lambda: bambara,
}


def get_normalizer(name: str) -> Callable[[str], str]:
    """The normaliser called ``name``; ValueError listing the known names otherwise."""
    if name not in _NORMALIZERS:
        raise ValueError(f"unknown normalizer {name!r}; known: {sorted(_NORMALIZERS)}")
    return _NORMALIZERS[name]()
