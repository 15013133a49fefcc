"""C4's heuristic page filters (Raffel et al. 2020, "Exploring the Limits of Transfer Learning").

C4 deletes lines that do not end in terminal punctuation, have fewer than 5 words or mention
javascript, then drops a page with fewer than 3 sentences left, or with "lorem ipsum" or a curly
bracket anywhere. Filters here keep or drop whole documents and never edit text, so the line
rules become document-level fractions (as FineWeb did, Penedo et al. 2024), and the sentence
rule counts the sentences in the lines C4 would keep.
"""

from __future__ import annotations

import re

from flywheel.core.settings.filters import C4Settings
from flywheel.data.filters.gopher import fmt, non_blank_lines

_END_MARKS = (".", "!", "?", '"')
# C4 counted sentences with NLTK's punkt; a run of end marks, optionally closed by a quote or
# bracket, before whitespace or the end is close enough for a threshold of 3 and needs no model.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
# C4 also deletes cookie/terms boilerplate lines; they don't count towards its sentences.
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies")


class C4Filter:
    """C4's rules as document filters; see ``C4Settings`` for the thresholds."""

    name = "c4"

    def __init__(self, settings: C4Settings) -> None:
        self.settings = settings

    def keep(self, text: str) -> tuple[bool, str]:
        s = self.settings
        lower = text.lower()
        if s.drop_lorem_ipsum and "lorem ipsum" in lower:
            return False, "lorem_ipsum present"
        if s.drop_curly_bracket and "{" in text:
            return False, "curly_bracket present"
        lines = non_blank_lines(text)
        why = self._line_rules(lines) if lines else ""
        why = why or self._sentence_rule(lines)
        return not why, why

    def _line_rules(self, lines: list[str]) -> str:
        s = self.settings
        n = len(lines)
        terminal = sum(1 for line in lines if _ends_sentence(line)) / n
        if terminal < s.min_terminal_punct_line_fraction:
            return (
                f"terminal_punct_line_fraction {fmt(terminal)} < "
                f"{s.min_terminal_punct_line_fraction:g}"
            )
        short = sum(1 for line in lines if len(line.split()) < s.min_words_per_line) / n
        if short > s.max_short_line_fraction:
            return (
                f"short_line_fraction {fmt(short)} > {s.max_short_line_fraction:g} "
                f"(lines under {s.min_words_per_line} words)"
            )
        javascript = sum(1 for line in lines if "javascript" in line.lower()) / n
        if javascript > s.max_javascript_line_fraction:
            return (
                f"javascript_line_fraction {fmt(javascript)} > {s.max_javascript_line_fraction:g}"
            )
        return ""

    def _sentence_rule(self, lines: list[str]) -> str:
        s = self.settings
        sentences = 0
        for line in lines:
            if sentences >= s.min_sentences:
                return ""
            if _c4_keeps(line, s.min_words_per_line):
                sentences += len(_SENTENCE_END.findall(line))
        if sentences < s.min_sentences:
            return f"sentences_in_kept_lines {sentences} < {s.min_sentences}"
        return ""


def _ends_sentence(line: str) -> bool:
    # C4 treats a trailing "..." as unfinished, not as a period.
    return line.endswith(_END_MARKS) and not line.endswith("...")


def _c4_keeps(line: str, min_words: int) -> bool:
    """Whether C4's line cleaning would keep this (stripped, non-blank) line."""
    if not _ends_sentence(line) or len(line.split()) < min_words:
        return False
    lower = line.lower()
    return "javascript" not in lower and not any(p in lower for p in _POLICY)
