"""The head of every data file the spec names, parsed by the reader its stage uses.

    python -c "from flywheel.core.spec import load_spec; from flywheel.preflight.samples \
import check_samples; print(*check_samples(load_spec()), sep='\\n')"

At most ``SAMPLE`` records of each file are read: sources through the ingest readers and
``RecordChecker`` (per file of a glob; a text_files directory as one sample), SFT files
through ``sft_record`` (``flywheel.core.chat``), eval task files through ``task_record`` with
the task's verifier, prompt files through ``prompt_record``; SFT data made by a function
(kind ``python``, e.g. an environment played by a scripted teacher) by calling it for ``MADE``
records, imported from the spec's directory as the stage imports it. Records that would be
quarantined are a warning with their reasons counted; a file none of whose sampled records
is usable is an error. Prompt files are also checked against the acceptance verifier: every
kind but python, self_consistency and reward_model judges against the prompt's reference
answer, so prompts without one can never be accepted. A missing file is left to
``flywheel.preflight.paths``, which reports it once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flywheel.core.chat import sft_record
from flywheel.core.records import read_jsonl
from flywheel.core.settings.sources import PythonEnvSource, TextFilesSource
from flywheel.core.settings.train import SftData
from flywheel.core.settings.verifier import JUDGE_KINDS
from flywheel.core.spec import Spec
from flywheel.data.ingest.readers import SourceReadError, read_batches, source_files
from flywheel.data.ingest.records import RecordChecker
from flywheel.loop.plugins import importable_from
from flywheel.loop.prompts import prompt_record
from flywheel.loop.tasks import task_record
from flywheel.loop.verifiers import parse_number
from flywheel.preflight.paths import resolve
from flywheel.preflight.problems import Problem, counted, error, raised, warning
from flywheel.train.sft_data import made_rows

SAMPLE = 50  # records read from the head of each file: enough to catch a wrong schema
MADE = 4  # records a kind-python sft.data function is asked for

Parse = Callable[[dict[str, Any]], tuple[Any, str]]  # a record -> (example or None, reason)


def check_samples(spec: Spec) -> list[Problem]:
    """Problems in the sampled records of every source, SFT, eval task and prompt file."""
    problems = _sources(spec)
    for key, data in _sft_sets(spec.sft.data, "sft.data"):
        problems += _made(spec, key, data) if data.kind == "python" else _sft(key, data)
    for i, task in enumerate(spec.eval.tasks):
        if task.kind == "jsonl" and task.path is not None and Path(task.path).is_file():
            parse = _task_parser(task.verifier.kind)
            problems += _jsonl(f"eval.tasks[{i}].path", Path(task.path), parse)
    return problems + _prompts(spec)


def verdict(key: str, file: Path, read: int, bad: Counter[str]) -> list[Problem]:
    """Read ``read`` records of ``file``, ``bad`` of them unusable by reason: the problems."""
    if read == 0:
        return [error(key, "has no records", file)]
    sampled = f"of the first {read} record(s)"
    if sum(bad.values()) >= read:
        return [error(key, f"no usable record: all {sampled} are bad ({counted(bad)})", file)]
    if bad:
        n = sum(bad.values())
        return [warning(key, f"{n} {sampled} would be quarantined ({counted(bad)})", file)]
    return []


# -- sources: the ingest readers and record checker -----------------------------------------
def _sources(spec: Spec) -> list[Problem]:
    problems = []
    for i, source in enumerate(spec.sources):
        key = f"sources[{i}].path"
        if isinstance(source, PythonEnvSource):
            continue  # reads this Python installation: nothing to resolve
        try:
            files = source_files(source, spec.base_dir)
        except FileNotFoundError as exc:  # a missing file or directory, a glob matching none
            problems.append(error(key, str(exc)))
            continue
        if isinstance(source, TextFilesSource):  # one record per file: sample the directory
            problems += _source_sample(spec, key, source, resolve(spec, Path(source.path)))
            continue
        for file in files:
            one = source.model_copy(update={"path": str(file)})
            problems += _source_sample(spec, key, one, file)
    return problems


def _source_sample(spec: Spec, key: str, source: Any, file: Path) -> list[Problem]:
    checker = RecordChecker(
        source.name,
        max_doc_bytes=spec.ingest.max_doc_bytes,
        require_id=getattr(source, "require_id", False),
    )
    batches = read_batches(
        source,
        base_dir=spec.base_dir,
        batch_rows=SAMPLE,
        max_doc_bytes=spec.ingest.max_doc_bytes,
    )
    try:
        batch = next(batches, [])
    except SourceReadError as exc:  # a corrupt file, a Parquet file without the text column
        return [error(key, str(exc), file)]
    finally:
        batches.close()
    checker.check_batch(batch)
    return verdict(key, file, len(batch), Counter(checker.quarantine_by_reason))


# -- SFT data: sft_record, on every file of sft.data and its extra sets -------------------
def _sft_sets(data: SftData, key: str) -> Iterator[tuple[str, SftData]]:
    yield key, data
    for i, more in enumerate(data.extra):
        yield from _sft_sets(more, f"{key}.extra[{i}]")


def _made(spec: Spec, key: str, data: SftData) -> list[Problem]:
    """Call the ``python`` function for ``MADE`` records and parse them as the stage does."""
    few = data.model_copy(update={"num_examples": min(MADE, data.num_examples)})
    try:
        with importable_from(spec.base_dir):
            rows = [row for _, row in made_rows(few)]
    except Exception as exc:  # noqa: BLE001 - user code: it can raise anything
        why = f"{data.function}(num_examples={MADE}, ...) raised {raised(exc)}"
        return [error(f"{key}.function", why)]
    if not rows:
        return [error(f"{key}.function", f"{data.function} returned no records")]
    _, bad = _parsed(rows, sft_record)
    return verdict(f"{key}.function", Path(str(data.function)), len(rows), bad)


def _sft(key: str, data: SftData) -> list[Problem]:
    if data.kind not in ("jsonl", "parquet") or data.path is None:
        return []
    path = Path(data.path)
    if not path.is_file():
        return []  # reported by the path check
    if data.kind == "jsonl":
        return _jsonl(f"{key}.path", path, sft_record)
    try:
        with pq.ParquetFile(path) as parquet:
            batch = next(parquet.iter_batches(batch_size=SAMPLE), None)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        return [error(f"{key}.path", f"not a readable Parquet file: {exc}", path)]
    rows = batch.to_pylist() if batch is not None else []
    _, bad = _parsed(rows, sft_record)
    return verdict(f"{key}.path", path, len(rows), bad)


# -- JSON Lines files: eval tasks and prompts -----------------------------------------------
def _task_parser(verifier: str) -> Parse:
    return lambda obj: task_record(obj, verifier)


def _read(path: Path, parse: Parse) -> tuple[list[Any], Counter[str]]:
    """The usable examples of the file's first ``SAMPLE`` lines, and the bad ones' reasons."""
    records, bad_lines = read_jsonl(path, limit=SAMPLE)
    examples, bad = _parsed([obj for _, obj in records], parse)
    return examples, bad + Counter(q["reason"] for q in bad_lines)


def _parsed(rows: list[dict[str, Any]], parse: Parse) -> tuple[list[Any], Counter[str]]:
    examples, bad = [], Counter[str]()
    for row in rows:
        example, reason = parse(row)
        if example is None:
            bad[reason] += 1
        else:
            examples.append(example)
    return examples, bad


def _jsonl(key: str, path: Path, parse: Parse) -> list[Problem]:
    examples, bad = _read(path, parse)
    return verdict(key, path, len(examples) + sum(bad.values()), bad)


def _prompts(spec: Spec) -> list[Problem]:
    source, key = spec.generation.prompts, "generation.prompts.path"
    if source.kind != "jsonl" or source.path is None or not Path(source.path).is_file():
        return []
    path = Path(source.path)
    examples, bad = _read(path, prompt_record)
    problems = verdict(key, path, len(examples) + sum(bad.values()), bad)
    kind = spec.acceptance.verifier.kind
    if kind in JUDGE_KINDS or not examples:  # the others judge against a reference answer
        return problems
    vkey = "acceptance.verifier.kind"
    unanswered = sum(e["answer"] is None for e in examples)
    if unanswered == len(examples):
        why = f"verifier {kind} judges against a reference answer, and no sampled prompt has one"
        return [*problems, error(vkey, f"{why}: every generation would be rejected", path)]
    if unanswered:
        why = f"{unanswered} of {len(examples)} sampled prompts have no answer"
        problems.append(warning(vkey, f"{why}: verifier {kind} rejects them (no_reference)", path))
    if kind == "numeric":
        odd = sum(e["answer"] is not None and parse_number(e["answer"]) is None for e in examples)
        if odd:
            why = f"{odd} of {len(examples)} sampled answers are not numbers"
            problems.append(warning(vkey, f"{why}: verifier numeric rejects them", path))
    return problems
