"""Gopher's heuristic document filters (Rae et al. 2021, "Scaling Language Models", appendix A).

Two families, each one object with ``name`` and ``keep(text) -> (kept, reason)``:

* ``GopherQualityFilter``: word count, mean word length, '#'/ellipsis-to-word ratios, bullet
  and ellipsis lines, words with a letter, English stop words.
* ``GopherRepetitionFilter``: duplicate lines and paragraphs (by count and by characters), the
  share of characters in the most frequent 2/3/4-gram, and the share of characters covered by
  repeated 5..10-grams.

Each family splits a document once and shares the split between its rules; rules run cheapest
first and the first failing rule gives the reason, e.g. ``"word_count 12 < 20"``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import accumulate

from flywheel.core.settings.filters import GopherQualitySettings, GopherRepetitionSettings

# A token made only of these characters is a symbol, not a word (Gopher's word count and mean
# word length are about words; a lone "-" or "==" would otherwise count as a short word).
_PUNCT = string.punctuation + "…“”‘’«»–—•·"
_BULLETS = ("•", "-", "*", "‣", "◦", "▪", "●")
_ELLIPSES = ("...", "…")
# Any alphabetic character: a word character that is neither a digit nor an underscore.
_HAS_ALPHA = re.compile(r"[^\W\d_]").search
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def fmt(value: float) -> str:
    """A measured value for a reason string, to four significant digits."""
    return f"{value:.4g}"


def non_blank_lines(text: str) -> list[str]:
    """The stripped, non-blank lines of ``text``; blank lines would dilute every line ratio."""
    return [line for line in (raw.strip() for raw in text.splitlines()) if line]


class GopherQualityFilter:
    """Gopher's quality rules; see ``GopherQualitySettings`` for the thresholds."""

    name = "gopher_quality"

    def __init__(self, settings: GopherQualitySettings) -> None:
        self.settings = settings
        alternatives = "|".join(re.escape(w) for w in sorted(set(settings.stop_words)))
        self._stop_word = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)

    def keep(self, text: str) -> tuple[bool, str]:
        s = self.settings
        tokens = text.split()
        # Symbol-only tokens strip to "" and add nothing to the length sum below.
        words = [t.strip(_PUNCT) for t in tokens]
        n = len(words) - words.count("")
        if n < s.min_words:
            return False, f"word_count {n} < {s.min_words}"
        if n > s.max_words:
            return False, f"word_count {n} > {s.max_words}"
        why = self._word_rules(text, tokens, n, sum(map(len, words)) / n) if n else ""
        why = why or self._line_rules(text) or self._stop_word_rule(text)
        return not why, why

    def _word_rules(self, text: str, tokens: list[str], n: int, mean: float) -> str:
        s = self.settings
        if mean < s.min_mean_word_length:
            return f"mean_word_length {fmt(mean)} < {s.min_mean_word_length:g}"
        if mean > s.max_mean_word_length:
            return f"mean_word_length {fmt(mean)} > {s.max_mean_word_length:g}"
        # The paper's symbol rule applies to the hash and the ellipsis separately.
        hashes = text.count("#") / n
        if hashes > s.max_symbol_word_ratio:
            return f"hash_word_ratio {fmt(hashes)} > {s.max_symbol_word_ratio:g}"
        ellipses = (text.count("...") + text.count("…")) / n
        if ellipses > s.max_symbol_word_ratio:
            return f"ellipsis_word_ratio {fmt(ellipses)} > {s.max_symbol_word_ratio:g}"
        # Over all whitespace tokens, symbols included: a symbol-heavy text is what it catches.
        alpha = sum(1 for t in tokens if t.isalpha() or _HAS_ALPHA(t)) / len(tokens)
        if alpha < s.min_alpha_word_fraction:
            return f"alpha_word_fraction {fmt(alpha)} < {s.min_alpha_word_fraction:g}"
        return ""

    def _line_rules(self, text: str) -> str:
        s = self.settings
        lines = non_blank_lines(text)
        if not lines:
            return ""
        bullets = sum(1 for line in lines if line.startswith(_BULLETS)) / len(lines)
        if bullets > s.max_bullet_line_fraction:
            return f"bullet_line_fraction {fmt(bullets)} > {s.max_bullet_line_fraction:g}"
        ellipses = sum(1 for line in lines if line.endswith(_ELLIPSES)) / len(lines)
        if ellipses > s.max_ellipsis_line_fraction:
            return f"ellipsis_line_fraction {fmt(ellipses)} > {s.max_ellipsis_line_fraction:g}"
        return ""

    def _stop_word_rule(self, text: str) -> str:
        # Occurrences, not distinct words (the paper is ambiguous; datatrove counts occurrences).
        # Stop scanning once there are enough.
        needed = self.settings.min_stop_words
        if needed <= 0:
            return ""
        found = 0
        for _ in self._stop_word.finditer(text):
            found += 1
            if found >= needed:
                return ""
        return f"stop_words {found} < {needed}"


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier item, and how many characters those repeats hold."""
    if len(set(items)) == len(items):
        return 0, 0
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _repeating_ngrams(
    words: list[str], sizes: list[int]
) -> Iterator[tuple[int, list[int], list[tuple[str, ...]], Counter[tuple[str, ...]]]]:
    """For each n in ascending ``sizes``: every occurrence of an n-gram that occurs twice or more.

    Yields ``(n, positions, grams, counts)``, positions ascending. An (n+1)-gram can only repeat
    where its n-gram does, so each size looks only at the previous size's positions: prose has
    few repeated 3-grams and fewer 5-grams, and this keeps the per-document cost near one pass.
    Stops at the first size where nothing repeats, since no longer n-gram can then.
    """
    m = len(words)
    positions: Iterable[int] | None = None
    for n in sizes:
        if positions is None:
            grams = list(zip(*(words[i:] for i in range(n)), strict=False))
            positions = range(len(grams))
        else:
            positions = [i for i in positions if i + n <= m]
            grams = [tuple(words[i : i + n]) for i in positions]
        counts = Counter(grams)
        if len(counts) == len(grams):
            return
        repeating = [(i, g) for i, g in zip(positions, grams, strict=True) if counts[g] > 1]
        positions = [i for i, _ in repeating]
        grams = [g for _, g in repeating]
        yield n, positions, grams, counts


def _top_ngram_chars(counts: Counter[tuple[str, ...]]) -> int:
    """Characters in all occurrences of the most frequent n-gram."""
    gram, count = counts.most_common(1)[0]
    return count * sum(map(len, gram))


def _repeated_ngram_chars(
    n: int, positions: list[int], grams: list[tuple[str, ...]], prefix: list[int]
) -> int:
    """Characters of the words covered by a second or later occurrence of an n-gram.

    Overlapping occurrences are counted once (the paper's "taking care not to count characters
    that occur in overlapping n-grams more than once"); ``prefix`` holds cumulative word lengths.
    """
    # Built in C: reversed, so each n-gram keeps the position of its first occurrence.
    first = dict(zip(reversed(grams), reversed(positions), strict=True))
    chars = covered = 0
    for i in [i for i, gram in zip(positions, grams, strict=True) if first[gram] != i]:
        start = max(i, covered)
        covered = i + n
        chars += prefix[covered] - prefix[start]
    return chars


class GopherRepetitionFilter:
    """Gopher's repetition rules; see ``GopherRepetitionSettings`` for the thresholds."""

    name = "gopher_repetition"

    def __init__(self, settings: GopherRepetitionSettings) -> None:
        self.settings = settings
        self._top = settings.max_top_ngram_char_fraction
        self._duplicated = settings.max_duplicated_ngram_char_fraction
        self._sizes = sorted(set(self._top) | set(self._duplicated))

    def keep(self, text: str) -> tuple[bool, str]:
        s = self.settings
        paragraphs = [p for p in (raw.strip() for raw in _PARAGRAPH_BREAK.split(text)) if p]
        why = _duplicate_rule(
            "paragraph",
            paragraphs,
            s.max_duplicate_paragraph_fraction,
            s.max_duplicate_paragraph_char_fraction,
        ) or _duplicate_rule(
            "line",
            non_blank_lines(text),
            s.max_duplicate_line_fraction,
            s.max_duplicate_line_char_fraction,
        )
        why = why or self._ngram_rules(text.split())
        return not why, why

    def _ngram_rules(self, words: list[str]) -> str:
        """Top and duplicated n-gram rules, by ascending n (top 2..4, then duplicated 5..10).

        Shares are of word characters (whitespace excluded), the unit n-grams are made of. An
        n-gram that occurs once is no repetition, so a size with no repeats passes both rules.
        """
        total = sum(map(len, words))
        prefix = list(accumulate(map(len, words), initial=0))
        for n, positions, grams, counts in _repeating_ngrams(words, self._sizes):
            if n in self._top:
                share = min(1.0, _top_ngram_chars(counts) / total)  # overlaps can exceed 1
                if share > self._top[n]:
                    return f"top_{n}gram_char_fraction {fmt(share)} > {self._top[n]:g}"
            if n in self._duplicated:
                share = _repeated_ngram_chars(n, positions, grams, prefix) / total
                if share > self._duplicated[n]:
                    return (
                        f"duplicated_{n}gram_char_fraction {fmt(share)} > {self._duplicated[n]:g}"
                    )
        return ""


def _duplicate_rule(kind: str, items: list[str], max_items: float, max_chars: float) -> str:
    if not items:
        return ""
    count, chars = _duplicates(items)
    share = count / len(items)
    if share > max_items:
        return f"duplicate_{kind}_fraction {fmt(share)} > {max_items:g}"
    # Of the characters in all lines (or paragraphs), so indentation and blank lines don't count.
    char_share = chars / sum(map(len, items))
    if char_share > max_chars:
        return f"duplicate_{kind}_char_fraction {fmt(char_share)} > {max_chars:g}"
    return ""
