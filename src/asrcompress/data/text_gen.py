"""Sentences for the synthesised corpora: word lists and a small grammar per language.

Three languages:

* ``en`` English;
* ``hi`` Hindi in Devanagari (with nukta, chandrabindu, anusvara, conjuncts with halant, danda and
  Devanagari digits, so the Hindi normaliser has real work);
* ``bm`` a stand-in for Bambara. espeak-ng has no Bambara voice (nor any Manding language), so
  the text is Bambara-like: real Bambara vocabulary in its Latin orthography (ɛ, ɔ, ɲ, ŋ) on a
  simple subject-auxiliary-object-verb grammar, with French code-switched words, as the
  BaldWhisper paper says Bambara speakers use. It is spoken by espeak-ng's Swahili voice (a
  Latin-script African language with open syllables and a close consonant set) through a
  grapheme map, and the French words by the French voice. It is not validated by a speaker.

Every sentence comes from a template and a seeded RNG; digits appear both as words and as
numerals (``"23"`` in English, ``"२३"`` in Hindi) so normalisers have numbers to reconcile.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------- English
_EN = {
    "det": ["the", "a", "my", "your", "our", "this", "that"],
    "adj": ["red", "small", "old", "quiet", "heavy", "green", "happy", "strange"],
    "noun": ["cat", "dog", "farmer", "teacher", "river", "window", "garden", "doctor", "train",
             "market", "letter", "bottle", "village", "horse"],
    "verb_past": ["found", "opened", "carried", "painted", "watched", "cleaned", "sold", "visited"],
    "prep": ["near", "behind", "under", "inside"],
    "time": ["today", "yesterday", "tonight", "on monday", "in the morning"],
    "plural": ["apples", "boxes", "books", "chairs", "stones", "birds"],
}
_EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_EN_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
             "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def english_number(n: int) -> str:
    """0..999 in English words ("one hundred and five", "twenty three")."""
    if not 0 <= n <= 999:
        raise ValueError(f"english_number: {n} out of range 0..999")
    if n < 10:
        return _EN_ONES[n]
    if n < 20:
        return _EN_TEENS[n - 10]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _EN_TENS[tens] + ("" if ones == 0 else " " + _EN_ONES[ones])
    hundreds, rest = divmod(n, 100)
    head = _EN_ONES[hundreds] + " hundred"
    return head if rest == 0 else head + " and " + english_number(rest)


def _en_sentence(rng: random.Random) -> str:
    w = _EN
    c = rng.choice
    form = rng.randrange(5)
    if form == 0:
        return f"{c(w['det'])} {c(w['adj'])} {c(w['noun'])} {c(w['verb_past'])} {c(w['det'])} {c(w['noun'])}"
    if form == 1:
        n = rng.randrange(2, 20) if rng.random() < 0.7 else rng.randrange(2, 10) * 10
        count = str(n) if rng.random() < 0.25 else english_number(n)  # numerals and words both occur
        return f"{c(w['det'])} {c(w['noun'])} {c(w['verb_past'])} {count} {c(w['plural'])} {c(w['time'])}"
    if form == 2:
        return f"{c(w['det'])} {c(w['noun'])} is {c(w['prep'])} {c(w['det'])} {c(w['adj'])} {c(w['noun'])}"
    if form == 3:
        return f"room {rng.randrange(1, 10)} {c(w['time'])}"
    return f"{c(w['time'])} {c(w['det'])} {c(w['adj'])} {c(w['noun'])} {c(w['verb_past'])} the {c(w['plural'])}"


# ------------------------------------------------------------------------------------------ Hindi
_HI = {
    "subj": ["राम", "सीता", "मेरा भाई", "उसकी बहन", "किसान", "अध्यापक", "डॉक्टर", "बच्चा", "लड़की",
             "हमारा दोस्त", "पड़ोसी", "दुकानदार"],
    "place": ["बाज़ार", "स्कूल", "घर", "दफ़्तर", "गाँव", "शहर", "मंदिर", "अस्पताल", "खेत", "स्टेशन",
              "विद्यालय", "नदी"],
    "obj": ["किताब", "चाय", "पानी", "रोटी", "फल", "अख़बार", "कपड़े", "सब्ज़ी", "चिट्ठी", "दूध",
            "कुर्सी", "गाड़ी"],
    "verb": ["लाता है", "खरीदता है", "देखता है", "पढ़ता है", "बेचता है", "रखता है", "माँगता है",
             "धोता है"],
    "time": ["आज", "कल", "सुबह", "शाम को", "रात में", "हर दिन", "सोमवार को", "अभी"],
    "adj": ["बड़ा", "छोटा", "नया", "पुराना", "सुंदर", "ठंडा", "गरम", "अच्छा"],
}
_HI_NUM = {1: "एक", 2: "दो", 3: "तीन", 4: "चार", 5: "पाँच", 6: "छह", 7: "सात", 8: "आठ", 9: "नौ",
           10: "दस", 11: "ग्यारह", 12: "बारह", 15: "पंद्रह", 20: "बीस", 25: "पच्चीस", 30: "तीस",
           50: "पचास", 100: "सौ"}
_DEVANAGARI_DIGITS = str.maketrans("0123456789", "०१२३४५६७८९")


def _hi_sentence(rng: random.Random) -> str:
    w = _HI
    c = rng.choice
    form = rng.randrange(4)
    if form == 0:
        return f"{c(w['subj'])} {c(w['time'])} {c(w['place'])} जाता है"
    if form == 1:
        n = rng.choice(sorted(_HI_NUM))
        count = _HI_NUM[n] if rng.random() < 0.5 else str(n).translate(_DEVANAGARI_DIGITS)
        return f"{c(w['subj'])} {count} {c(w['obj'])} {c(w['verb'])}"
    if form == 2:
        end = "।" if rng.random() < 0.5 else ""
        return f"{c(w['place'])} में {c(w['adj'])} {c(w['obj'])} है{end}"
    return f"क्या {c(w['subj'])} {c(w['time'])} {c(w['obj'])} {c(w['verb'])}"


# ------------------------------------------------------------------------------ Bambara stand-in
_BM = {
    "subj": ["n", "i", "a", "an", "aw", "u", "muso", "cɛ", "den", "mɔgɔ", "karamɔgɔ", "sene kɛla",
             "n balima", "n teri"],
    "aux": ["bɛ", "tɛ", "ye", "ma", "bɛna"],
    "obj": ["ji", "malo", "nɔnɔ", "jɛgɛ", "misi", "saga", "wulu", "jakuma", "wari", "kɔgɔ", "dumuni",
            "baara", "sira", "so", "ŋaniya", "ɲɔ"],
    "verb": ["min", "dun", "san", "feere", "ye", "fɔ", "kɛ", "sɔrɔ", "ɲini", "ta", "di", "lajɛ"],
    "place": ["sugu la", "so kɔnɔ", "dugu la", "foro la", "kɔ da la", "sira kan"],
    "time": ["bi", "sini", "kunun", "sɔgɔma", "wula fɛ", "su fɛ"],
}
_BM_NUM = ["kelen", "fila", "saba", "naani", "duuru", "wɔɔrɔ", "wolonwula", "seegin", "kɔnɔntɔn", "tan"]
# French code-switching (spoken by the French voice)
_FR = ["voiture", "téléphone", "bureau", "hôpital", "école", "lundi", "vendredi", "médicament",
       "ordinateur", "marché"]


def _bm_sentence(rng: random.Random) -> str:
    w = _BM
    c = rng.choice
    form = rng.randrange(4)
    if form == 0:
        return f"{c(w['subj'])} {c(w['aux'])} {c(w['obj'])} {c(w['verb'])} {c(w['place'])}"
    if form == 1:
        i = rng.randrange(len(_BM_NUM))
        count = _BM_NUM[i] if rng.random() < 0.5 else str(i + 1)
        return f"{c(w['subj'])} ye {c(w['obj'])} {count} san {c(w['time'])}"
    if form == 2:  # code-switched: a French noun in a Bambara frame
        return f"{c(w['subj'])} {c(w['aux'])} taa {c(_FR)} {c(w['time'])}"
    return f"{c(w['time'])} {c(w['subj'])} {c(w['aux'])} {c(w['obj'])} {c(w['verb'])}"


FRENCH_WORDS = frozenset(_FR)

_GENERATORS = {"en": _en_sentence, "hi": _hi_sentence, "bm": _bm_sentence}
LANGUAGES = tuple(_GENERATORS)


@dataclass(frozen=True)
class SentenceSplits:
    train: list[str]
    dev: list[str]
    test: list[str]


def vocabulary(language: str) -> set[str]:
    """All distinct words the grammar of ``language`` can produce (numbers as words included)."""
    tables = {"en": _EN, "hi": _HI, "bm": _BM}[language]
    words = {tok for group in tables.values() for phrase in group for tok in phrase.split()}
    if language == "en":
        words |= set(_EN_ONES + _EN_TEENS + [t for t in _EN_TENS if t]) | {"hundred", "and", "room", "is", "the"}
    elif language == "hi":
        words |= set(_HI_NUM.values()) | {"जाता", "है", "में", "क्या"}
    else:
        words |= set(_BM_NUM) | set(_FR) | {"taa", "ye", "san"}
    return words


def make_sentences(language: str, n_train: int, n_dev: int, n_test: int, seed: int,
                   max_tries_factor: int = 50) -> SentenceSplits:
    """Distinct sentences split three ways; dev and test never repeat a training sentence.

    Held-out sentences are new combinations of training words (the grammar is shared), never
    copies. Raises ValueError if the grammar cannot yield that many distinct sentences.
    """
    if language not in _GENERATORS:
        raise ValueError(f"unknown language {language!r}; known: {LANGUAGES}")
    gen = _GENERATORS[language]
    rng = random.Random(seed)
    total = n_train + n_dev + n_test
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < total:
        tries += 1
        if tries > max_tries_factor * total:
            raise ValueError(f"{language}: grammar produced only {len(seen)} distinct sentences, "
                             f"{total} requested; lower data sizes in params.yaml")
        seen.setdefault(gen(rng), None)
    sentences = list(seen)
    rng.shuffle(sentences)
    return SentenceSplits(sentences[:n_train], sentences[n_train:n_train + n_dev],
                          sentences[n_train + n_dev:])
