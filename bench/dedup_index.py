"""Benchmark of the persistent dedup index (``flywheel dedup --index``) as its partition
count grows: the local and the Ray index paths, CPU seconds per run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dedup_index.py [--base-mb 8] [--scale 4] \\
        [--partitions 32 128] [--engines local ray] [--batch-size 2000] [--profile] \\
        [--corpus-dir DIR]

Corpus: ``bench/dedup_scale.py``'s (the base corpus plus ``--scale`` - 1 perturbed copies).
Each (engine, partition count) runs in a fresh subprocess as ``flywheel dedup --index``
does: open the index, ``add`` the corpus in ``--batch-size`` batches, ``commit``; then a
second run adds one more batch (a perturbed copy of the first) to the committed index, as a
later incremental run would. Reported: wall seconds and CPU seconds (user + sys) of the
driver and, on Ray, of every process the driver started (raylet, workers), so a loaded
machine disturbs the comparison less than wall time would; the removed sets of every run are
checked equal. ``--profile`` prints the driver's top cProfile entries (cumulative).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CHILD = r"""
import cProfile, io, json, pstats, sys, tempfile, time
import numpy as np, psutil, pyarrow.parquet as pq
from flywheel.data.dedup import DedupIndex, DedupSettings
corpus, extra, engine, partitions, batch, profile = sys.argv[1:7]
settings = DedupSettings(index_partitions=int(partitions))
table = pq.read_table(corpus, columns=["id", "text"])
ids, texts = table["id"].to_pylist(), table["text"].to_pylist()
more = pq.read_table(extra, columns=["id", "text"])
me = psutil.Process()
def cpu():  # user + sys of this process and every live descendant (raylet, workers)
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total
if engine == "ray":
    import ray
    from flywheel.data.dedup.ray_index import RayDedupIndex as Index
    ray.init(address="local", num_cpus=1, include_dashboard=False,
             object_store_memory=1 << 30, log_to_driver=False)
    time.sleep(2)
    open_ = lambda path: Index.open(path, settings)
else:
    open_ = lambda path: DedupIndex.open(path, settings)
prof = cProfile.Profile() if profile == "1" else None
removed, out = [], {}
with tempfile.TemporaryDirectory() as tmp:
    for name, (run_ids, run_texts) in (("build", (ids, texts)),
            ("increment", (more["id"].to_pylist(), more["text"].to_pylist()))):
        c0, w0 = cpu(), time.perf_counter()
        if prof: prof.enable()
        index = open_(tmp)
        for a in range(0, len(run_ids), int(batch)):
            r = index.add(run_ids[a:a + int(batch)], run_texts[a:a + int(batch)])
            removed += [i for i, k in zip(run_ids[a:a + int(batch)], r.keep) if not k]
        index.commit()
        if prof: prof.disable()
        out[name] = {"wall": time.perf_counter() - w0, "cpu": cpu() - c0}
if prof:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(28)
    print(s.getvalue(), file=sys.stderr)
if engine == "ray":
    ray.shutdown()
print(json.dumps({**out, "removed": removed}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base-mb", type=float, default=8.0)
    p.add_argument("--scale", type=int, default=4, help="copies of the base corpus")
    p.add_argument("--partitions", type=int, nargs="+", default=[32, 128])
    p.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--profile", action="store_true", help="print the driver's cProfile")
    p.add_argument("--corpus-dir", type=Path, help="keep the corpus there, reuse it if there")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from dedup_scale import base_corpus, write_corpus  # bench/dedup_scale.py

    args = parse_args(argv)
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        where = args.corpus_dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        corpus = where / f"corpus-{args.base_mb}mb-{args.scale}x.parquet"
        extra = where / f"extra-{args.base_mb}mb-{args.batch_size}.parquet"
        if not (corpus.exists() and extra.exists()):  # building the base corpus takes minutes
            ids, texts = base_corpus(args.base_mb)
            write_corpus(ids, texts, args.scale, 0.03, corpus)
            n = min(args.batch_size, len(ids))
            write_corpus([f"{i}#more" for i in ids[:n]], texts[:n], 2, 0.03, extra)
        docs = pl.scan_parquet(corpus).select(pl.len()).collect().item()
        print(
            f"{docs} docs, {corpus.stat().st_size / 1e6:.1f} MB of Parquet, "
            f"batches of {args.batch_size}"
        )
        for engine in args.engines:
            for count in args.partitions:
                argv = [sys.executable, "-c", CHILD, str(corpus), str(extra), engine, str(count)]
                argv += [str(args.batch_size), "1" if args.profile else "0"]
                done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
                if done.returncode != 0:
                    raise RuntimeError(f"{engine} {count} failed:\n{done.stderr[-3000:]}")
                if args.profile:
                    print(done.stderr[-6000:])
                got = json.loads(done.stdout.strip().splitlines()[-1])
                reference = reference or got["removed"]
                if got["removed"] != reference:
                    raise AssertionError(f"{engine} with {count} partitions removed others")
                print(
                    f"{engine:5} partitions {count:4}: build {got['build']['wall']:6.1f} s wall "
                    f"{got['build']['cpu']:6.1f} s cpu | increment {got['increment']['wall']:5.1f}"
                    f" s wall {got['increment']['cpu']:5.1f} s cpu | removed "
                    f"{len(got['removed'])}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
