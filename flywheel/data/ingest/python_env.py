"""The ``python_env`` source: real text that is already on any machine with this project.

Nothing is downloaded and nothing is imported (bar the stdlib's own pydoc data): it reads

  * ``pydoc_topics``: the help topics of ``pydoc_data.topics`` (one document per topic);
  * ``module_docstrings``: docstrings of the modules and packages of the stdlib and
    site-packages, found by walking the ``sys.path`` entries of this Python installation and
    parsing each file's first statement with ``ast`` (test directories, and files whose
    docstring does not parse, are skipped);
  * ``package_metadata``: the long description of every installed distribution;
  * ``licenses``: LICENSE/COPYING/NOTICE files of distributions and top-level packages, many
    of them near-duplicates of each other (MIT, BSD, Apache), which a dedup stage should find.

Only ``sys.path`` entries inside the interpreter's prefixes are read, so the script directory
or working directory does not change the output; everything is read in sorted order, so ids
and outputs are the same on every run on the same machine.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import io
import itertools
import os
import re
import sys
import textwrap
import tokenize
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from flywheel.core.settings.sources import PYTHON_ENV_PARTS, PythonEnvSource
from flywheel.data.ingest.files import ReadStats, path_str, read_file_record
from flywheel.data.ingest.records import INVALID_UTF8, RAW_PREFIX_BYTES, RawRecord

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
_DIST_SUFFIXES = (".dist-info", ".egg-info")
_LICENSE_NAME = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)", re.IGNORECASE)
# A module has a docstring only if its first token is a string literal; checking that on the
# raw bytes spares parsing the ~60% of files that have none (parsing dominates the run time).
_DOCSTRING_HEAD = re.compile(
    rb"\A(?:\xef\xbb\xbf)?(?:[ \t\f]*(?:#[^\r\n]*)?(?:\r\n|\r|\n))*[ \t\f(]*[rRuU]?['\"]"
)

# This project's own distribution is left out: its metadata is our README, so every edit to
# the docs would change the corpus, the tokenizer and every model trained on it (measured: one
# README edit took the demo's seed model from 99.5% to 17% on 4-digit sums).
_OWN = "flywheel"

Part = Callable[["Roots", int, ReadStats], Iterator[RawRecord]]


class Roots(list):
    """The ``sys.path`` roots to read, and the distributions whose text may be read: None for
    every installed one, else a set of canonical names (``distributions: requirements``)."""

    def __init__(self, roots: list[Path], dists: set[str] | None = None):
        super().__init__(roots)
        self.dists = dists
        self.tops = None if dists is None else _top_levels(dists)

    def dist_ok(self, name: str) -> bool:
        return self.dists is None or canonical(name) in self.dists

    def top_ok(self, root: Path, name: str) -> bool:
        """Whether the top-level module or package ``name`` in ``root`` may be read: always
        in the standard library, else only a selected distribution's."""
        return self.tops is None or not _is_site(root) or name in self.tops


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(dist: str = _OWN) -> set[str]:
    """Canonical names of the distributions ``dist``'s requirements pull in, recursively,
    without any extra (markers evaluated for this interpreter); ``dist`` itself left out."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [dist]
    while todo:
        try:
            requires = importlib.metadata.requires(todo.pop()) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonical(req.name)
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _top_levels(dists: set[str]) -> set[str]:
    """The top-level module and package names the distributions ``dists`` installed."""
    tops: set[str] = set()
    for d in importlib.metadata.distributions():
        if canonical(d.metadata["Name"] or "") not in dists:
            continue
        for f in d.files or []:
            top = f.parts[0]
            if not top.endswith(_DIST_SUFFIXES) and top not in ("..", "__pycache__"):
                tops.add(top[:-3] if top.endswith(".py") else top)
    return tops


def _is_site(root: Path) -> bool:
    return root.name in ("site-packages", "dist-packages")


def python_roots() -> list[Path]:
    """The ``sys.path`` directories of this Python installation (stdlib, site-packages)."""
    prefixes = {
        Path(p).resolve()
        for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    roots: list[Path] = []
    for entry in sys.path:
        if not entry:  # the working directory
            continue
        p = Path(entry).resolve()
        if p.is_dir() and p not in roots and any(p.is_relative_to(pre) for pre in prefixes):
            roots.append(p)
    return roots


def iter_python_env(
    spec: PythonEnvSource, max_doc_bytes: int, stats: ReadStats
) -> Iterator[RawRecord]:
    """The records of the included parts, in canonical part order, at most ``max_docs``."""
    parts: dict[str, Part] = {
        "pydoc_topics": _pydoc_topics,
        "module_docstrings": _module_docstrings,
        "package_metadata": _package_metadata,
        "licenses": _licenses,
    }
    roots = Roots(
        python_roots(), requirement_closure() if spec.distributions == "requirements" else None
    )
    records = itertools.chain.from_iterable(
        parts[name](roots, max_doc_bytes, stats)
        for name in PYTHON_ENV_PARTS
        if name in spec.include
    )
    return itertools.islice(records, spec.max_docs)


def _pydoc_topics(roots: list[Path], max_doc_bytes: int, stats: ReadStats) -> Iterator[RawRecord]:
    from pydoc_data import topics  # the stdlib's data module; importing it runs no code of note

    path = Path(topics.__file__)
    stats.files += 1
    stats.bytes_read += path.stat().st_size
    for i, key in enumerate(sorted(topics.topics)):
        yield RawRecord(
            path_str(path),
            i,
            f"{path_str(path)}:{i}",
            text=topics.topics[key],
            id_value=f"topic:{key}",
        )


def _module_files(root: Path, roots: Roots) -> Iterator[tuple[str, Path]]:
    """``(module name, file)`` under ``root``, sorted, skipping tests and non-packages."""

    def walk(directory: str, parts: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if not parts and not roots.top_ok(root, e.name.removesuffix(".py")):
                continue
            if e.is_dir(follow_symlinks=False):
                # Only identifier-named dirs can be packages (skips *.dist-info, site-packages).
                if e.name.isidentifier() and e.name not in _SKIP_DIRS and Path(e.path) not in roots:
                    yield from walk(e.path, (*parts, e.name))
            elif e.name.endswith(".py") and e.is_file():
                stem = e.name[:-3]
                if not stem.isidentifier() or stem.startswith("test_") or stem == "conftest":
                    continue
                module = parts if stem == "__init__" else (*parts, stem)
                if module:
                    yield ".".join(module), Path(e.path)

    return walk(str(root), ())


# What reading a module's head may raise; TokenError: a string or bracket left open to the end.
_UNPARSABLE = (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError,
               tokenize.TokenError)  # fmt: skip


def _docstring(data: bytes, path: Path) -> tuple[bool, str | None]:
    """``(parsable, docstring)`` of a module's source, without importing it. Only the first
    logical line is parsed (the docstring and whatever shares its statement): parsing whole
    files took three quarters of the run, and a module whose docstring parses has one even if
    code further down does not (Python 2 or template files)."""
    if not _DOCSTRING_HEAD.match(data):
        return True, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes etc. in third-party code
            tree = ast.parse(_first_logical_line(data), filename=str(path))
    except _UNPARSABLE:
        return False, None
    return True, ast.get_docstring(tree)


def _first_logical_line(data: bytes) -> bytes:
    """The physical lines of ``data`` up to the end of its first statement, which
    ``tokenize`` finds without reading further (the encoding cookie is in them)."""
    for token in tokenize.tokenize(io.BytesIO(data).readline):
        if token.type == tokenize.NEWLINE:
            return b"".join(itertools.islice(io.BytesIO(data), token.end[0]))
    return data


def _module_docstrings(roots: Roots, max_doc_bytes: int, stats: ReadStats) -> Iterator[RawRecord]:
    for root in roots:
        for module, path in _module_files(root, roots):
            try:
                data = path.read_bytes()
            except OSError:
                stats.skipped["unreadable_file"] += 1
                continue
            stats.files += 1
            stats.bytes_read += len(data)
            parsable, doc = _docstring(data, path)
            if not parsable:
                stats.skipped["unparsable_file"] += 1
            elif doc is None:
                stats.skipped["no_docstring"] += 1
            else:
                shown = path_str(path)
                yield RawRecord(shown, 0, shown, text=doc, id_value=f"module:{module}")


def _dist_dirs(roots: list[Path]) -> Iterator[tuple[str, Path]]:
    """``(distribution name, *.dist-info or *.egg-info dir)`` in each root, sorted; never
    this project's own, and only the selected ones of ``Roots``."""
    for root in roots:
        for d in sorted(root.iterdir()):
            if d.suffix in _DIST_SUFFIXES and d.is_dir():
                # "<name>-<version>.dist-info": names in these dirs never contain "-".
                name = d.name[: -len(d.suffix)].split("-")[0]
                if name.lower() != _OWN and (not isinstance(roots, Roots) or roots.dist_ok(name)):
                    yield name, d


def environment_digest(spec: PythonEnvSource | None = None) -> str:
    """``sha256:...`` of what this source reads, cheaply: the Python version and the
    installed distributions it reads (name and version, this project's own left out, as it
    is from the corpus). The same environment gives the same digest, so its raw set is
    reused; with ``distributions: requirements`` installing anything else changes nothing."""
    selected = spec is not None and spec.distributions == "requirements"
    roots = Roots(python_roots(), requirement_closure() if selected else None)
    dists = sorted(d.name for _, d in _dist_dirs(roots))
    blob = "\n".join([sys.version, *map(str, roots), *dists]).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _package_metadata(roots: Roots, max_doc_bytes: int, stats: ReadStats) -> Iterator[RawRecord]:
    for name, d in _dist_dirs(roots):
        meta_file = next((d / f for f in ("METADATA", "PKG-INFO") if (d / f).is_file()), None)
        if meta_file is None:
            stats.skipped["no_metadata"] += 1
            continue
        shown = path_str(meta_file)
        rec = RawRecord(shown, 0, shown, id_value=f"dist:{name}")
        stats.files += 1
        stats.bytes_read += meta_file.stat().st_size
        try:
            rec.text = _description(importlib.metadata.PathDistribution(d).metadata)
        except UnicodeDecodeError as e:
            with open(meta_file, "rb") as f:
                rec.raw = f.read(RAW_PREFIX_BYTES)
            rec.error = (INVALID_UTF8, f"{meta_file.name}: {e.reason} at byte {e.start}")
        if rec.text is None and rec.error is None:
            stats.skipped["no_description"] += 1
            continue
        yield rec


def _description(meta: importlib.metadata.PackageMetadata) -> str | None:
    """The long description: the message body, or the (older) Description header."""
    body = meta.get_payload()  # type: ignore[attr-defined]
    if isinstance(body, str) and body.strip():
        return body
    header = meta.get("Description")
    if not header or header.strip() == "UNKNOWN":
        return None
    # Continuation lines may keep their RFC 822 folding indent (8 spaces, from setuptools).
    first, _, rest = header.partition("\n")
    return f"{first}\n{textwrap.dedent(rest)}" if rest else first


def _licenses(roots: Roots, max_doc_bytes: int, stats: ReadStats) -> Iterator[RawRecord]:
    def record(path: Path, source_id: str) -> RawRecord:
        return read_file_record(path, source_id, path_str(path), max_doc_bytes, stats)

    names = {d: name for name, d in _dist_dirs(roots)}
    for root in roots:
        for entry in sorted(root.iterdir()):
            if entry in names:
                for f in _dist_license_files(entry):
                    yield record(f, f"license:{names[entry]}/{f.relative_to(entry).as_posix()}")
            elif not roots.top_ok(root, entry.name):
                continue
            elif entry.is_dir() and entry.name.isidentifier() and entry not in roots:
                for f in sorted(entry.iterdir()):
                    if _LICENSE_NAME.match(f.name) and f.is_file():
                        yield record(f, f"license:file:{root.name}/{entry.name}/{f.name}")
            elif _LICENSE_NAME.match(entry.name) and entry.is_file():
                yield record(entry, f"license:file:{root.name}/{entry.name}")


def _dist_license_files(d: Path) -> list[Path]:
    """License files of one distribution: LICENSE* etc. and everything under licenses/."""
    files = [f for f in sorted(d.iterdir()) if _LICENSE_NAME.match(f.name) and f.is_file()]
    licenses = d / "licenses"  # PEP 639
    if licenses.is_dir():
        files += [f for f in sorted(licenses.rglob("*")) if f.is_file()]
    return files
