"""Settings for the heuristic quality filters: one sub-model per filter family.

The model is embedded in the project's YAML spec under ``filters:``. Thresholds default to the
published values (Gopher: Rae et al. 2021, appendix A; C4: Raffel et al. 2020, section 2.2)
except where the embedded default corpus -- Python docs, docstrings, READMEs, license texts --
calls for something else; each such departure says why in its description or comment.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Gopher's stop-word rule: a document must contain at least two of these English words.
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def _fraction(default: float, description: str) -> Any:
    """A field that must lie in [0, 1]; pydantic names the field and the bound when it does not."""
    return Field(default=default, ge=0.0, le=1.0, description=description)


def _check_ngram_fractions(value: dict[int, float], smallest_n: int) -> dict[int, float]:
    for n, fraction in value.items():
        if n < smallest_n:
            raise ValueError(f"n-gram size {n} must be >= {smallest_n}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction for {n}-grams must be in [0, 1], got {fraction}")
    return dict(sorted(value.items()))


class GopherQualitySettings(BaseModel):
    """Gopher's document-quality rules (word counts, word shape, symbols, lines, stop words)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Apply the Gopher quality rules.")
    # Gopher uses 50; docstrings and short package descriptions in the default corpus are
    # often complete, useful texts of 20-50 words, so the floor is lower here.
    min_words: int = Field(default=20, ge=0, description="Fewest words (Gopher: 50).")
    max_words: int = Field(default=100_000, ge=0, description="Most words (Gopher: 100,000).")
    min_mean_word_length: float = Field(
        default=3.0, ge=0.0, description="Smallest mean word length in characters (Gopher: 3)."
    )
    max_mean_word_length: float = Field(
        default=10.0, ge=0.0, description="Largest mean word length in characters (Gopher: 10)."
    )
    max_symbol_word_ratio: float = Field(
        default=0.1,
        ge=0.0,
        description="Most '#' or ellipses per word, each symbol on its own (Gopher: 0.1).",
    )
    max_bullet_line_fraction: float = _fraction(
        0.9, "Most non-blank lines that start with a bullet (Gopher: 0.9)."
    )
    max_ellipsis_line_fraction: float = _fraction(
        0.3, "Most non-blank lines that end with an ellipsis (Gopher: 0.3)."
    )
    min_alpha_word_fraction: float = _fraction(
        0.8, "Fewest words containing an alphabetic character (Gopher: 0.8)."
    )
    min_stop_words: int = Field(
        default=2, ge=0, description="Fewest occurrences of the stop words (Gopher: 2)."
    )
    stop_words: list[str] = Field(
        default_factory=lambda: list(GOPHER_STOP_WORDS),
        description="Words counted by the stop-word rule, matched case-insensitively.",
    )

    @field_validator("stop_words")
    @classmethod
    def _normalise_stop_words(cls, value: list[str]) -> list[str]:
        words = [w.strip().lower() for w in value]
        if any(not w or any(c.isspace() for c in w) for w in words):
            raise ValueError("stop_words must be single non-empty words")
        return words

    @model_validator(mode="after")
    def _check_ranges(self) -> GopherQualitySettings:
        if self.min_words > self.max_words:
            raise ValueError(
                f"min_words ({self.min_words}) must be <= max_words ({self.max_words})"
            )
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(
                f"min_mean_word_length ({self.min_mean_word_length}) must be <= "
                f"max_mean_word_length ({self.max_mean_word_length})"
            )
        if self.min_stop_words > 0 and not self.stop_words:
            raise ValueError("min_stop_words > 0 needs a non-empty stop_words list")
        return self


class GopherRepetitionSettings(BaseModel):
    """Gopher's repetition rules: duplicate lines/paragraphs and repeated n-grams."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Apply the Gopher repetition rules.")
    max_duplicate_line_fraction: float = _fraction(
        0.30, "Most non-blank lines that repeat an earlier line (Gopher: 0.30)."
    )
    max_duplicate_paragraph_fraction: float = _fraction(
        0.30, "Most paragraphs that repeat an earlier paragraph (Gopher: 0.30)."
    )
    max_duplicate_line_char_fraction: float = _fraction(
        0.20, "Most characters in repeated lines, of all characters (Gopher: 0.20)."
    )
    max_duplicate_paragraph_char_fraction: float = _fraction(
        0.20, "Most characters in repeated paragraphs, of all characters (Gopher: 0.20)."
    )
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> most word characters in the most frequent n-gram (Gopher: n=2..4).",
    )
    max_duplicated_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> most word characters in repeated n-grams (Gopher: n=5..10).",
    )

    @field_validator("max_top_ngram_char_fraction", "max_duplicated_ngram_char_fraction")
    @classmethod
    def _check_ngrams(cls, value: dict[int, float]) -> dict[int, float]:
        return _check_ngram_fractions(value, smallest_n=1)


class C4Settings(BaseModel):
    """C4's rules (Raffel et al. 2020), as keep/drop decisions on whole documents.

    C4 deletes offending *lines* and keeps the rest of the page; these filters never edit text,
    so the line rules become document-level fractions (the approach FineWeb took, Penedo et al.
    2024). Off by default: they were designed for web pages, and the default corpus is code
    documentation, where '{' and unterminated lines are normal.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Apply the C4 rules (designed for web text).")
    drop_lorem_ipsum: bool = Field(
        default=True, description="Drop documents containing 'lorem ipsum' (C4)."
    )
    drop_curly_bracket: bool = Field(
        default=True, description="Drop documents containing '{', a sign of code (C4)."
    )
    min_words_per_line: int = Field(
        default=5, ge=0, description="Words a line needs for C4 to keep it (C4: 5)."
    )
    min_sentences: int = Field(
        default=3, ge=0, description="Fewest sentences in the lines C4 would keep (C4: 3)."
    )
    min_terminal_punct_line_fraction: float = _fraction(
        0.12, "Fewest non-blank lines ending in . ! ? or \" (FineWeb's form of the C4 rule: 0.12)."
    )
    max_short_line_fraction: float = _fraction(
        0.67, "Most non-blank lines with fewer than min_words_per_line words (FineWeb: 0.67)."
    )
    # C4 deletes every line mentioning javascript ("please enable JavaScript" notices); a page
    # where such lines are rare keeps one stray line here instead of being dropped whole.
    max_javascript_line_fraction: float = _fraction(
        0.1, "Most non-blank lines mentioning 'javascript' (C4 deletes each such line)."
    )


class FilterSettings(BaseModel):
    """All heuristic filter families; the spec's ``filters:`` section."""

    model_config = ConfigDict(extra="forbid")

    gopher_quality: GopherQualitySettings = Field(
        default_factory=GopherQualitySettings, description="Gopher quality rules."
    )
    gopher_repetition: GopherRepetitionSettings = Field(
        default_factory=GopherRepetitionSettings, description="Gopher repetition rules."
    )
    c4: C4Settings = Field(default_factory=C4Settings, description="C4 rules (off by default).")
