"""Tests for the heuristic quality filters (flywheel.data.filters): every rule keeps good prose and
drops a crafted bad document with the expected reason; settings validation; accounting."""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import accumulate
from pydoc_data.topics import topics

import polars as pl
import pytest
from pydantic import BaseModel, ValidationError

from flywheel.data.documents import DOCUMENT_SCHEMA, DROPPED_SCHEMA
from flywheel.data.filters import (
    C4Filter,
    C4Settings,
    FilterOutcome,
    FilterSettings,
    GopherQualityFilter,
    GopherQualitySettings,
    GopherRepetitionFilter,
    GopherRepetitionSettings,
    apply_filters,
    build_filters,
    gopher,
)

PARAGRAPHS = [
    "The old railway line that once carried slate down from the quarries has been turned into "
    "a footpath, and on a clear morning it is one of the pleasantest walks in the valley. The "
    "gradient is gentle because the engineers who built it could not let their trains climb too "
    "steeply, so even small children manage the first few miles without complaint.",
    "Halfway along, the path crosses a stone viaduct with views over the river. Herons often "
    "stand in the shallows below, waiting with great patience for a fish to come within reach. "
    "In late spring the banks are covered with bluebells, and the air smells faintly of wild "
    "garlic.",
    "Beyond the viaduct the track enters a cutting where ferns grow out of every crack in the "
    "rock. It is cool there even in summer. Walkers who want a longer day can leave the railway "
    "at the far end and follow a signed route up to the ridge, returning by the village and its "
    "small tea room.",
]
# One paragraph per line, like extracted web text: passes every family, C4 included.
GOOD = "\n\n".join(PARAGRAPHS)
# Real documentation prose with hard-wrapped lines and code samples (Python's own docs).
DOCS = [topics["assert"], topics["global"], topics["with"]]

QUALITY = GopherQualitySettings()
REPETITION = GopherRepetitionSettings()
C4 = C4Settings(enabled=True)


def quality(text: str, **overrides: object) -> tuple[bool, str]:
    return GopherQualityFilter(QUALITY.model_copy(update=overrides)).keep(text)


def repetition(text: str, **overrides: object) -> tuple[bool, str]:
    return GopherRepetitionFilter(REPETITION.model_copy(update=overrides)).keep(text)


def c4(text: str) -> tuple[bool, str]:
    return C4Filter(C4).keep(text)


# --- Gopher quality --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [GOOD, *DOCS])
def test_good_documents_pass_both_gopher_families(text: str) -> None:
    assert quality(text) == (True, "")
    assert repetition(text) == (True, "")


def test_word_count_too_low() -> None:
    assert quality("Far too short to be a document.") == (False, "word_count 7 < 20")


def test_word_count_counts_words_not_symbols() -> None:
    # 20 words plus stand-alone symbols: the symbols are not words, so exactly the minimum.
    text = " ".join(PARAGRAPHS[0].split()[:20]) + " - == -> ::"
    assert quality(text) == (True, "")
    assert quality(" ".join(PARAGRAPHS[0].split()[:19]) + " - == -> ::")[1] == (
        "word_count 19 < 20"
    )


def test_word_count_too_high_at_published_limit() -> None:
    words = GOOD.split()
    text = " ".join(words[i % len(words)] for i in range(100_001))
    assert quality(text) == (False, "word_count 100001 > 100000")


def test_mean_word_length_too_short() -> None:
    text = "I am so ok. " * 10  # 40 words, mean 1.75 characters
    assert quality(text) == (False, "mean_word_length 1.75 < 3")


def test_mean_word_length_too_long() -> None:
    text = "Internationalization notwithstanding, telecommunications infrastructure " * 6
    ok, why = quality(text)
    assert not ok
    assert re.fullmatch(r"mean_word_length 1\d\.\d+ > 10", why), why


def test_hash_to_word_ratio() -> None:
    text = GOOD + " #walks #railway #valley" * 8  # 24 hashes over ~175 words
    ok, why = quality(text)
    assert not ok
    assert why.startswith("hash_word_ratio 0.1") and why.endswith("> 0.1"), why
    assert quality(GOOD + " #walks #railway")[0]


def test_ellipsis_to_word_ratio() -> None:
    words = PARAGRAPHS[1].split()
    text = " ".join(w + "..." if i % 5 == 0 else w for i, w in enumerate(words))
    ok, why = quality(text)
    assert not ok
    assert why.startswith("ellipsis_word_ratio 0.2") and why.endswith("> 0.1"), why


def test_alpha_word_fraction() -> None:
    numbers = " ".join(str(1000 + i) for i in range(60))  # 60 of ~210 tokens have no letter
    ok, why = quality(GOOD + "\n" + numbers)
    assert not ok
    assert why.startswith("alpha_word_fraction 0.7") and why.endswith("< 0.8"), why


def test_bullet_lines() -> None:
    items = [s.strip() for s in PARAGRAPHS[1].split(".") if s.strip()]
    bulleted = "\n".join(f"- {item}." for item in items)
    assert quality(bulleted) == (False, "bullet_line_fraction 1 > 0.9")
    # One line of prose in ten is enough to pass the published threshold.
    mixed = "\n".join([PARAGRAPHS[0]] + [f"* {item}." for item in items * 3][:9])
    assert quality(mixed) == (True, "")


def test_ellipsis_lines() -> None:
    # 12 words per line keeps the ellipsis-to-word ratio under 0.1; 4 of 10 lines trail off.
    words = (PARAGRAPHS[0] + " " + PARAGRAPHS[2]).split()
    lines = [" ".join(words[i * 12 : i * 12 + 12]) for i in range(10)]
    text = "\n".join(line + ("..." if i % 5 in (0, 2) else ".") for i, line in enumerate(lines))
    assert quality(text) == (False, "ellipsis_line_fraction 0.4 > 0.3")


def test_stop_words() -> None:
    text = (
        "Walkers leave early. Herons stand silently in shallow water, waiting patiently for "
        "fish. Ferns grow from every crack in this rock; bluebells cover both banks each "
        "spring, filling valleys."
    )
    assert quality(text) == (False, "stop_words 0 < 2")
    assert quality(text + " The path is cool and quiet.") == (True, "")


def test_stop_words_are_whole_words_any_case() -> None:
    base = " ".join(["Walkers admire herons, ferns, bluebells, viaducts"] * 4)
    assert quality(base + " Theory, bestow, tomorrow.")[1] == "stop_words 0 < 2"
    assert quality(base + " THE END; Of course.")[0]


# --- Gopher repetition -----------------------------------------------------------------------


def test_duplicate_paragraph_fraction() -> None:
    text = "\n\n".join([PARAGRAPHS[0], PARAGRAPHS[1], PARAGRAPHS[0]])
    assert repetition(text) == (False, "duplicate_paragraph_fraction 0.3333 > 0.3")


def test_duplicate_paragraph_char_fraction() -> None:
    short = [s.strip() + "." for s in PARAGRAPHS[1].split(".") if s.strip()]
    text = "\n\n".join([PARAGRAPHS[2], *short, PARAGRAPHS[2]])  # 1 of 6 repeats, but a long one
    ok, why = repetition(text)
    assert not ok
    assert re.fullmatch(r"duplicate_paragraph_char_fraction 0\.\d+ > 0\.2", why), why


def test_duplicate_line_fraction() -> None:
    lines = [s.strip() + "." for s in PARAGRAPHS[0].split(",")]
    text = "\n".join([lines[0], lines[1], lines[0], lines[2], lines[0]])  # one paragraph
    assert repetition(text) == (False, "duplicate_line_fraction 0.4 > 0.3")


def test_duplicate_line_char_fraction() -> None:
    short = [s.strip() + "." for s in PARAGRAPHS[1].split(".") if s.strip()]
    text = "\n".join([PARAGRAPHS[2], *short, "A stile.", "A gate.", "A bench.", PARAGRAPHS[2]])
    ok, why = repetition(text)
    assert not ok
    assert re.fullmatch(r"duplicate_line_char_fraction 0\.\d+ > 0\.2", why), why


def test_blank_lines_are_not_duplicate_lines() -> None:
    text = GOOD.replace("\n\n", "\n\n   \n\n")
    assert repetition(text) == (True, "")


def test_top_2gram_char_fraction() -> None:
    fillers = PARAGRAPHS[2].split()[:15]
    text = " ".join(f"slate quarry {w}" for w in fillers)
    ok, why = repetition(text)
    assert not ok
    assert re.fullmatch(r"top_2gram_char_fraction 0\.\d+ > 0\.2", why), why


def test_top_4gram_char_fraction() -> None:
    fillers = PARAGRAPHS[2].split()[:12]
    text = " ".join(f"on a clear morning {w}" for w in fillers)
    # Only the 4-gram rule, so the (larger) 2- and 3-gram shares don't answer first.
    ok, why = repetition(text, max_top_ngram_char_fraction={4: 0.16})
    assert not ok
    assert re.fullmatch(r"top_4gram_char_fraction 0\.\d+ > 0\.16", why), why
    assert repetition(
        text, max_top_ngram_char_fraction={4: 0.9}, max_duplicated_ngram_char_fraction={}
    )[0]


def test_duplicated_5gram_char_fraction() -> None:
    # Two sentences said twice inside one paragraph: no line or paragraph repeats, and no
    # single short n-gram dominates, but 18% of the word characters are a repeated passage.
    repeated = ". ".join(PARAGRAPHS[1].split(". ")[:2]) + "."
    text = f"{PARAGRAPHS[0]} {repeated} {PARAGRAPHS[2]} {repeated}"
    ok, why = repetition(text)
    assert not ok
    assert re.fullmatch(r"duplicated_5gram_char_fraction 0\.\d+ > 0\.15", why), why
    assert repetition(f"{PARAGRAPHS[0]} {repeated} {PARAGRAPHS[2]}") == (True, "")


def test_duplicated_ngram_fraction_exact_value() -> None:
    # 5 words of 2 characters, said twice: the second copy is 10 of 20 word characters.
    text = "ab cd ef gh ij ab cd ef gh ij"
    assert repetition(text, max_top_ngram_char_fraction={}) == (
        False,
        "duplicated_5gram_char_fraction 0.5 > 0.15",
    )


def _naive_duplicated_chars(words: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            covered[i : i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c)


def _naive_top_chars(words: list[str], n: int) -> int:
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not counts or max(counts.values()) < 2:
        return 0
    gram, count = counts.most_common(1)[0]
    return count * sum(map(len, gram))


def test_ngram_shortcuts_match_brute_force() -> None:
    # The filter only revisits positions where a shorter n-gram repeated; check that pruning
    # against a direct count on random texts with small vocabularies (so n-grams do repeat).
    rng = random.Random(7)
    sizes = list(range(2, 11))
    for _ in range(300):
        vocab = [f"w{k}" + "x" * rng.randint(0, 5) for k in range(rng.randint(1, 12))]
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
        prefix = list(accumulate(map(len, words), initial=0))
        got = {
            n: (
                gopher._top_ngram_chars(counts),
                gopher._repeated_ngram_chars(n, pos, grams, prefix),
            )
            for n, pos, grams, counts in gopher._repeating_ngrams(words, sizes)
        }
        for n in sizes:
            expected = (_naive_top_chars(words, n), _naive_duplicated_chars(words, n))
            assert got.get(n, (0, 0)) == expected, (n, words)


# --- C4 --------------------------------------------------------------------------------------


def test_c4_keeps_web_like_prose() -> None:
    assert c4(GOOD) == (True, "")


def test_c4_is_strict_about_hard_wrapped_docs() -> None:
    # Why the family is off by default: wrapped documentation lines rarely end in punctuation.
    assert not c4(topics["assert"])[0]


def test_c4_lorem_ipsum() -> None:
    text = GOOD + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert c4(text) == (False, "lorem_ipsum present")


def test_c4_curly_bracket() -> None:
    assert c4(GOOD + "\n\nUse the dict literal {'a': 1} here.") == (False, "curly_bracket present")


def test_c4_terminal_punctuation_lines() -> None:
    menu = ["Home", "About the valley", "Walks and trails", "Maps", "Contact us", "Shop"]
    text = "\n".join([*menu, "Opening hours", "Events this month", PARAGRAPHS[0]])
    assert c4(text) == (False, "terminal_punct_line_fraction 0.1111 < 0.12")
    # A few menu lines among prose pass (C4 itself would just delete them).
    assert c4("\n".join([*menu[:3], PARAGRAPHS[0], PARAGRAPHS[1]])) == (True, "")


def test_c4_short_lines() -> None:
    short = ["Open daily.", "Dogs welcome.", "Free parking!", "Toilets nearby.", "No cycling."]
    text = "\n".join([*short, "Tea room closed Mondays.", PARAGRAPHS[0]])
    assert c4(text) == (
        False,
        "short_line_fraction 0.8571 > 0.67 (lines under 5 words)",
    )


def test_c4_javascript_lines() -> None:
    notice = "Please enable JavaScript in your browser to see the map."
    text = "\n".join([*PARAGRAPHS, notice, notice.upper()])
    assert c4(text) == (False, "javascript_line_fraction 0.4 > 0.1")


def test_c4_sentences_in_kept_lines() -> None:
    text = "The path is open again after the storm.\nThe tea room serves soup until four."
    assert c4(text) == (False, "sentences_in_kept_lines 2 < 3")
    # Sentences on a line C4 would delete (no end mark) do not count.
    text3 = text + "\nIt rained. It snowed. It cleared. Then came the floods and"
    assert c4(text3) == (False, "sentences_in_kept_lines 2 < 3")
    # Nor on a line that trails off: C4 treats a final "..." as unfinished.
    trailing = text + "\nWe walked on. It grew late. We kept going until..."
    assert c4(trailing) == (False, "sentences_in_kept_lines 2 < 3")
    assert c4(text + "\nBring a map and a warm coat, just in case.") == (True, "")


# --- Settings --------------------------------------------------------------------------------


def test_published_defaults() -> None:
    s = FilterSettings()
    assert s.gopher_quality.enabled and s.gopher_repetition.enabled and not s.c4.enabled
    q = s.gopher_quality
    assert (q.min_words, q.max_words) == (20, 100_000)  # Gopher: 50 minimum, see settings
    assert (q.min_mean_word_length, q.max_mean_word_length) == (3, 10)
    assert q.max_symbol_word_ratio == 0.1 and q.max_bullet_line_fraction == 0.9
    assert q.max_ellipsis_line_fraction == 0.3 and q.min_alpha_word_fraction == 0.8
    assert q.min_stop_words == 2
    assert q.stop_words == ["the", "be", "to", "of", "and", "that", "have", "with"]
    r = s.gopher_repetition
    assert r.max_duplicate_line_fraction == r.max_duplicate_paragraph_fraction == 0.3
    assert r.max_duplicate_line_char_fraction == r.max_duplicate_paragraph_char_fraction == 0.2
    assert r.max_top_ngram_char_fraction == {2: 0.2, 3: 0.18, 4: 0.16}
    assert r.max_duplicated_ngram_char_fraction == {
        5: 0.15,
        6: 0.14,
        7: 0.13,
        8: 0.12,
        9: 0.11,
        10: 0.10,
    }
    assert (s.c4.min_words_per_line, s.c4.min_sentences) == (5, 3)


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    nested = [
        f.annotation
        for f in model.model_fields.values()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    ]
    return [model, *(m for sub in nested for m in _models(sub))]


def test_every_field_has_a_default_and_a_description() -> None:
    models = _models(FilterSettings)
    assert len(models) == 4
    for model in models:
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert not field.is_required(), f"{model.__name__}.{name}"
            assert field.description and "\n" not in field.description, f"{model.__name__}.{name}"


def test_settings_from_yaml_like_mapping() -> None:
    s = FilterSettings.model_validate(
        {
            "gopher_quality": {"min_words": 50, "stop_words": ["The", "of"]},
            "gopher_repetition": {"max_top_ngram_char_fraction": {"3": 0.5, "2": 0.4}},
            "c4": {"enabled": True},
        }
    )
    assert s.gopher_quality.min_words == 50 and s.gopher_quality.stop_words == ["the", "of"]
    assert list(s.gopher_repetition.max_top_ngram_char_fraction.items()) == [(2, 0.4), (3, 0.5)]
    assert [f.name for f in build_filters(s)] == ["gopher_quality", "gopher_repetition", "c4"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"gopher_quality": {"min_words": 200, "max_words": 100}}, "min_words (200) must be <="),
        (
            {"gopher_quality": {"min_mean_word_length": 8, "max_mean_word_length": 4}},
            "min_mean_word_length (8.0) must be <=",
        ),
        ({"gopher_quality": {"min_words": -1}}, "greater than or equal to 0"),
        ({"gopher_quality": {"max_bullet_line_fraction": 1.5}}, "less than or equal to 1"),
        ({"gopher_repetition": {"max_duplicate_line_fraction": -0.1}}, "greater than or equal"),
        ({"c4": {"max_short_line_fraction": 2}}, "less than or equal to 1"),
        (
            {"gopher_repetition": {"max_top_ngram_char_fraction": {2: 1.2}}},
            "fraction for 2-grams must be in [0, 1], got 1.2",
        ),
        (
            {"gopher_repetition": {"max_duplicated_ngram_char_fraction": {0: 0.1}}},
            "n-gram size 0 must be >= 1",
        ),
        ({"gopher_quality": {"stop_words": ["the", "two words"]}}, "single non-empty words"),
        ({"gopher_quality": {"stop_words": []}}, "min_stop_words > 0 needs"),
        ({"gopher_quality": {"min_word": 5}}, "Extra inputs are not permitted"),
        ({"gopher": {}}, "Extra inputs are not permitted"),
    ],
)
def test_settings_reject_nonsense(data: dict, message: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        FilterSettings.model_validate(data)
    assert message in str(excinfo.value)


# --- build_filters / apply_filters ------------------------------------------------------------


def _frame(texts: list[str | None]) -> pl.DataFrame:
    rows = {
        "id": [f"src-{i:04d}" for i in range(len(texts))],
        "text": texts,
        "source": ["src"] * len(texts),
        "source_id": [None] * len(texts),
        "path": ["docs.jsonl"] * len(texts),
        "offset": list(range(len(texts))),
    }
    return pl.DataFrame(rows, schema=DOCUMENT_SCHEMA)


def test_build_filters_order_and_disabled_families() -> None:
    assert [f.name for f in build_filters(FilterSettings())] == [
        "gopher_quality",
        "gopher_repetition",
    ]
    none = FilterSettings(gopher_quality={"enabled": False}, gopher_repetition={"enabled": False})
    assert build_filters(none) == []


def test_disabled_family_does_nothing() -> None:
    repetitive = "\n\n".join([PARAGRAPHS[0], PARAGRAPHS[1], PARAGRAPHS[0]])
    df = _frame([GOOD, repetitive])
    on = apply_filters(df, build_filters(FilterSettings()))
    assert on.dropped["id"].to_list() == ["src-0001"]
    off = apply_filters(df, build_filters(FilterSettings(gopher_repetition={"enabled": False})))
    assert off.kept["id"].to_list() == ["src-0000", "src-0001"]
    assert "gopher_repetition" not in off.stats["filters"]
    nothing = apply_filters(_frame(["x", None]), [])
    assert nothing.kept.height == 2 and nothing.stats["keep_rate"] == 1.0


def test_apply_filters_accounts_for_every_document() -> None:
    texts = [
        GOOD,
        "Too short.",
        "\n\n".join([PARAGRAPHS[1], PARAGRAPHS[1], PARAGRAPHS[2]]),
        None,
        topics["assert"],
        GOOD + "\n\nfunction walk() { return true; }",
        "short {curly} text",  # fails gopher_quality and c4: the first filter wins
    ]
    df = _frame(texts)
    out = apply_filters(df, build_filters(FilterSettings(c4={"enabled": True})))
    assert isinstance(out, FilterOutcome)
    assert out.kept.schema == df.schema
    assert out.dropped.schema == pl.Schema(DROPPED_SCHEMA)
    assert out.kept.height + out.dropped.height == df.height
    assert sorted(out.kept["id"].to_list() + out.dropped["id"].to_list()) == df["id"].to_list()
    assert out.dropped["reason"].null_count() == 0

    d = out.decisions
    assert d.columns == ["id", "kept", "filter", "reason"]
    assert d["id"].to_list() == df["id"].to_list()
    assert d.filter("kept")["id"].to_list() == out.kept["id"].to_list() == ["src-0000"]
    assert d.filter("kept").select(pl.col("filter", "reason").is_null().all()).row(0) == (
        True,
        True,
    )
    assert d.filter(~pl.col("kept")).select(pl.col("filter", "reason").is_not_null().all()).row(
        0
    ) == (True, True)
    by_id = {r["id"]: (r["filter"], r["reason"]) for r in d.iter_rows(named=True)}
    assert by_id["src-0001"] == ("gopher_quality", "word_count 2 < 20")
    assert by_id["src-0002"][0] == "gopher_repetition"
    assert by_id["src-0003"] == ("gopher_quality", "word_count 0 < 20")  # null text
    assert by_id["src-0004"] == ("c4", "terminal_punct_line_fraction 0.09091 < 0.12")
    assert by_id["src-0005"] == ("c4", "curly_bracket present")
    assert by_id["src-0006"] == ("gopher_quality", "word_count 3 < 20")
    # dropped.reason is "<filter>: <why>", matching the decision row.
    for row in out.dropped.iter_rows(named=True):
        assert row["reason"] == "{}: {}".format(*by_id[row["id"]])


def test_apply_filters_stats() -> None:
    class Contains:
        def __init__(self, name: str, needle: str) -> None:
            self.name, self.needle = name, needle

        def keep(self, text: str) -> tuple[bool, str]:
            found = self.needle in text
            return (False, f"contains {self.needle!r}") if found else (True, "")

    df = _frame(["x", "y", "xy", "z", "zz"])
    out = apply_filters(df, [Contains("no_x", "x"), Contains("no_y", "y")])
    assert out.decisions["filter"].to_list() == ["no_x", "no_y", "no_x", None, None]
    assert out.stats["documents"] == 5
    assert (out.stats["kept"], out.stats["dropped"]) == (2, 3)
    assert out.stats["keep_rate"] == pytest.approx(0.4)
    no_x, no_y = out.stats["filters"]["no_x"], out.stats["filters"]["no_y"]
    assert (no_x["evaluated"], no_x["dropped"], no_x["kept"]) == (5, 2, 3)
    assert no_x["keep_rate"] == pytest.approx(0.6)
    assert (no_y["evaluated"], no_y["dropped"], no_y["kept"]) == (3, 1, 2)
    assert no_y["keep_rate"] == pytest.approx(2 / 3)
    assert no_x["rules"] == {"contains": 2}


def test_apply_filters_edge_cases() -> None:
    class Silent:
        name = "silent"

        def keep(self, text: str) -> tuple[bool, str]:
            return False, ""

    out = apply_filters(_frame(["anything"]), [Silent()])
    assert out.dropped["reason"].to_list() == ["silent: rejected"]

    empty = apply_filters(_frame([]), build_filters(FilterSettings()))
    assert empty.kept.height == empty.dropped.height == empty.decisions.height == 0
    assert empty.dropped.schema == pl.Schema(DROPPED_SCHEMA)
    assert empty.stats["keep_rate"] is None
    assert empty.stats["filters"]["gopher_quality"]["keep_rate"] is None

    with pytest.raises(ValueError, match="needs columns"):
        apply_filters(pl.DataFrame({"id": ["a"]}), [])
    with pytest.raises(ValueError, match="unique"):
        apply_filters(_frame(["a"]), [Silent(), Silent()])


def test_decision_stats_over_batches_match_one_pass() -> None:
    from flywheel.data.filters import decision_stats

    texts = [*topics.values(), "too short", "", "a b c"]
    df = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
    filters = build_filters(FilterSettings())
    whole = apply_filters(df, filters)
    parts = [apply_filters(df.slice(i, 20), filters).decisions for i in range(0, df.height, 20)]
    names = [f.name for f in filters]
    assert decision_stats(pl.concat(parts), names) == whole.stats
    assert whole.stats["dropped"] >= 3
