"""Benchmark of the catalog: writes and reads in one process, and several processes at once.

    .venv/bin/python bench/catalog.py [--writes N] [--processes P]

Only the public API (``Catalog.open``, ``record_*``, ``query``, ``decisions``, lineage), so
the same script times any implementation: run it once per checkout, e.g. the one before the
catalog moved to Parquet fragments with ``PYTHONPATH=<old checkout>``.

Measures (a) one process making N writes of five kinds in turn (a source's documents with
its quarantine, a cycle's generations, a run, a decision, an eval or a materialization),
then the mean time of each of six reads the CLI and the loop make; (b) P processes making N
writes each at once: the wall time until all are done, and that every row is there.
The last line is key=value pairs (milliseconds; ``parallel_s`` in seconds).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from flywheel.core.catalog import Catalog, CycleRun, Decision

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _write(cat: Catalog, worker: int, j: int) -> None:
    tag, kind = f"w{worker}-j{j}", j % 5
    if kind == 0:
        source = f"w{worker}-src{(j // 5) % 3}"
        ids = [f"{tag}-d{n}" for n in range(100)]
        docs = pl.DataFrame(
            {"doc_id": ids, "source": source, "source_id": ids, "path": "/x", "offset": 0}
        ).with_columns(content_hash=pl.col("doc_id"), n_chars=pl.lit(10), shard=pl.lit("s0"))
        quarantine = pl.DataFrame(
            {"source": [source], "path": ["/x"], "offset": [9], "reason": ["bad"]}
        ).with_columns(detail=pl.lit("d"), raw=pl.lit("{"))
        cat.record_source(source, docs, quarantine, tag)
    elif kind == 1:
        gens = pl.DataFrame({"generation_id": [f"{tag}-g{n}" for n in range(20)]})
        gens = gens.with_columns(
            prompt_id=pl.lit("p"), checkpoint=pl.lit(tag), status=pl.lit("accepted")
        ).with_columns(reason=pl.lit(None, pl.String))
        cat.record_generations(worker * 100 + j % 7, gens, tag)
    elif kind == 2:
        cat.record_cycle_run(CycleRun(f"run-{tag}", worker, "failed", tag, AT, "step"))
    elif kind == 3:
        cat.record_decision(Decision(worker, tag, "/c", "acc", j, None, None, True, "r", AT))
    elif j % 10 == 4:
        cat.record_eval(tag, f"e{worker}", {"accuracy": float(j), "perplexity": 3.0})
    else:
        cat.record_materialization("product", tag, "f", {"j": j})


def _writer(path: Path, worker: int, writes: int, start: float) -> None:
    cat = Catalog.open(path)
    while time.time() < start:
        time.sleep(0.005)
    for j in range(writes):
        _write(cat, worker, j)


READS = {
    "lineage": lambda c: c.document_lineage(_a_doc(c)),
    "decisions": lambda c: c.decisions(),
    "unresolved_runs": lambda c: c.cycle_runs(unresolved_failures=True),
    "counts": lambda c: c.counts(),
    "generations_by_cycle": lambda c: c.query(
        "SELECT cycle, status, count(*) FROM generations GROUP BY ALL"
    ),
    "eval_scores": lambda c: c.query("SELECT * FROM eval_scores WHERE checkpoint = 'w0-j4'"),
}
_DOC: list[str] = []


def _a_doc(cat: Catalog) -> str:
    if not _DOC:
        _DOC.append(cat.query("SELECT doc_id FROM documents LIMIT 1")["doc_id"][0])
    return _DOC[0]


def main(args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog.open(Path(tmp) / "one" / "catalog.duckdb")
        started = time.perf_counter()
        for j in range(args.writes):
            _write(cat, 0, j)
        out["write_ms"] = (time.perf_counter() - started) / args.writes * 1000
        for name, read in READS.items():
            read(cat)  # warm
            started = time.perf_counter()
            for _ in range(10):
                read(cat)
            out[f"{name}_ms"] = (time.perf_counter() - started) / 10 * 1000

        path = Path(tmp) / "many" / "catalog.duckdb"
        Catalog.open(path)
        spawn = multiprocessing.get_context("spawn")
        start = time.time() + 5.0  # the interpreters import first, untimed
        procs = [
            spawn.Process(target=_writer, args=(path, w, args.writes, start))
            for w in range(args.processes)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        out["parallel_s"] = time.time() - start
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        runs = Catalog.open(path).query("SELECT count(*) AS n FROM cycle_runs")["n"][0]
        assert runs == args.processes * len(range(2, args.writes, 5)), runs
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="writes per process")
    parser.add_argument("--processes", type=int, default=4, help="writers at once in (b)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    result = main(parse_args())
    print(" ".join(f"{k}={v:.1f}" for k, v in result.items()))
