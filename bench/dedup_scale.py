"""Benchmark of dedup as the input grows: local engine vs the Ray engine on 1 and 2 workers.

    .venv/bin/python bench/dedup_scale.py [--base-mb 8] [--scales 1 4 16] [--partitions 32]

Corpus: ``bench/dedup.py``'s (docstrings, package metadata, licenses, /usr/share/doc, man
pages; no downloads), its first ``--base-mb`` MB as the 1x corpus. The k x corpus is the
base plus k - 1 perturbed copies: in each copy every document has 3% of its words replaced
by random tokens, so a copy is a near-duplicate of its original (Jaccard of 5-gram shingles
around 0.75-0.85: some are removed, some kept, as in a real crawl) and the LSH, verification
and root stages do real work. Each corpus is written once as Parquet (id, text).

Each configuration runs in a fresh subprocess, which reads the Parquet in 2,000-row blocks:

- local: ``deduplicate`` in that one process;
- ray Nw: ``ray_engine.dedup_blocks`` on a local Ray cluster of N CPUs, with ``--partitions``
  hash partitions in every shuffle (fixed while the input grows).

Reported per run: wall seconds (for Ray, from the cluster being up: ``ray.init``'s few
seconds are reported apart, as ``init``), the driver's peak RSS, and, over the Ray worker processes,
the largest peak RSS (``VmHWM``, which also counts the object store's shared pages a worker
has read) and the largest anonymous (private) RSS, sampled every 0.25 s (``RssAnon`` has no
high-water mark of its own).
Every run's removed set is checked equal to the local engine's on the same corpus.

The last line is key=value pairs: ``ratio`` = ray 1-worker seconds / ray 2-worker seconds on
the largest corpus (goal >= 1.7 on 2 cores), ``rss_growth`` = the largest worker peak RSS on
the largest corpus / on the 1x corpus with 2 workers (goal <= 1.3), ``anon_growth`` the same
for the private memory, and the local engine's MB/s on the largest corpus.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from flywheel.core.settings.dedup import DedupSettings
from flywheel.core.settings.engine import RaySettings
path, engine, workers, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = DedupSettings()
def blocks():
    pos = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2000, columns=["id", "text"]):
        t = pa.Table.from_batches([batch])
        yield t.append_column("pos", pa.array(np.arange(pos, pos + t.num_rows), pa.int64()))
        pos += t.num_rows
start = time.perf_counter()
init = 0.0
peaks = {"VmHWM": 0, "RssAnon": 0}
if engine == "local":
    from flywheel.data.dedup import deduplicate
    table = pq.read_table(path, columns=["id", "text"])
    result = deduplicate(table["id"].to_pylist(), table["text"].to_pylist(), settings)
    removed = np.flatnonzero(~result.keep).tolist()
else:
    import threading
    import psutil, ray
    from flywheel.data.dedup.ray_engine import dedup_blocks
    def workers_memory():  # {field: bytes} of every Ray worker process now, the max of each
        now = {"VmHWM": 0, "RssAnon": 0}
        for p in psutil.process_iter(["cmdline"]):
            if (p.info["cmdline"] or [""])[0].startswith("ray::"):
                try:
                    for line in open(f"/proc/{p.pid}/status"):
                        key = line.split(":")[0]
                        if key in now:
                            now[key] = max(now[key], int(line.split()[1]) * 1024)
                except OSError:
                    pass
        return now
    stop = threading.Event()
    def sample():  # RssAnon has no high-water mark: sample it
        while not stop.wait(0.25):
            for key, value in workers_memory().items():
                peaks[key] = max(peaks[key], value)
    ray.init(address="local", num_cpus=workers, include_dashboard=False,
             object_store_memory=1 << 30, log_to_driver=False)
    init = time.perf_counter() - start
    start = time.perf_counter()  # the engine's time: a cluster is normally up already
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    gone = dedup_blocks(blocks(), settings, RaySettings(num_cpus=workers, partitions=partitions))
    removed = sorted(gone.column("pos").to_pylist())
    stop.set()
    sampler.join()
    for key, value in workers_memory().items():
        peaks[key] = max(peaks[key], value)
    ray.shutdown()
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would report the parent's (the corpus)
driver = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": seconds, "init": init, "driver_rss": driver,
                  "worker_rss": peaks["VmHWM"], "worker_anon": peaks["RssAnon"],
                  "removed": removed}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base-mb", type=float, default=8.0, help="size of the 1x corpus")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--partitions", type=int, default=32)
    p.add_argument("--noise", type=float, default=0.03, help="share of words replaced per copy")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Ray runs per worker count, 1 and 2 alternating; the fastest of each is reported",
    )
    return p.parse_args(argv)


def base_corpus(mb: float) -> tuple[list[str], list[str]]:
    from dedup import build_corpus  # bench/dedup.py

    ids, texts = build_corpus(None)
    out_ids, out_texts, size = [], [], 0
    for i, t in zip(ids, texts, strict=True):
        if size >= mb * 1e6:
            break
        out_ids.append(i)
        out_texts.append(t)
        size += len(t.encode())
    return out_ids, out_texts


def perturbed(text: str, noise: float, rng: random.Random) -> str:
    words = text.split()
    for _ in range(max(1, int(len(words) * noise))):
        words[rng.randrange(len(words))] = f"w{rng.randrange(10**9)}"
    return " ".join(words)


def write_corpus(ids: list[str], texts: list[str], k: int, noise: float, path: Path) -> float:
    rng = random.Random(k)
    all_ids, all_texts = list(ids), list(texts)
    for copy in range(1, k):
        all_ids += [f"{i}#copy{copy}" for i in ids]
        all_texts += [perturbed(t, noise, rng) for t in texts]
    pl.DataFrame({"id": all_ids, "text": all_texts}).write_parquet(path, row_group_size=2000)
    return sum(len(t.encode()) for t in all_texts) / 1e6


def run(path: Path, engine: str, workers: int, partitions: int) -> dict:
    argv = [sys.executable, "-c", CHILD, str(path), engine, str(workers), str(partitions)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} x{workers} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    ids, texts = base_corpus(args.base_mb)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.scales:
            path = Path(tmp) / f"corpus-{k}x.parquet"
            mb = write_corpus(ids, texts, k, args.noise, path)
            local = run(path, "local", 1, args.partitions)
            row = {"scale": k, "docs": len(ids) * k, "mb": mb, "local": local}
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for _ in range(args.repeats):  # back to back, so both see the same machine
                for workers in (1, 2):
                    got = run(path, "ray", workers, args.partitions)
                    if got["removed"] != local["removed"]:
                        raise AssertionError(f"ray x{workers} removed other documents at {k}x")
                    runs[workers].append(got)
            for workers, got in runs.items():  # the fastest: the least disturbed by others
                row[f"ray{workers}"] = min(got, key=lambda r: r["seconds"])
                row[f"ray{workers}_all"] = [round(r["seconds"], 1) for r in got]
            rows.append(row)
            print(_line(row), flush=True)
    top, one = rows[-1], rows[0]
    ratio = top["ray1"]["seconds"] / top["ray2"]["seconds"]
    growth = top["ray2"]["worker_rss"] / one["ray2"]["worker_rss"]
    anon = top["ray2"]["worker_anon"] / one["ray2"]["worker_anon"]
    print(f"(all runs in {time.perf_counter() - started:.0f} s; removed sets equal everywhere)")
    print(
        f"scales={'/'.join(str(r['scale']) for r in rows)} base_mb={args.base_mb} "
        f"partitions={args.partitions} local_mb_s={top['mb'] / top['local']['seconds']:.2f} "
        f"ray1_s={top['ray1']['seconds']:.1f} ray2_s={top['ray2']['seconds']:.1f} "
        f"ratio={ratio:.2f} rss_growth={growth:.2f} anon_growth={anon:.2f} "
        f"worker_rss_mb={top['ray2']['worker_rss'] / 2**20:.0f}"
    )


def _line(row: dict) -> str:
    parts = [f"{row['scale']:>3}x {row['docs']:>7} docs {row['mb']:7.1f} MB"]
    for name in ("local", "ray1", "ray2"):
        r = row[name]
        worker = ""
        if r["worker_rss"]:
            mb = r["worker_rss"] / 2**20, r["worker_anon"] / 2**20
            worker = f" worker {mb[0]:.0f} MB ({mb[1]:.0f} private)"
        parts.append(
            f"{name} {r['seconds']:7.1f} s driver {r['driver_rss'] / 2**20:5.0f} MB{worker}"
        )
    removed = len(row["local"]["removed"])
    runs = f" | ray1 runs {row['ray1_all']} ray2 runs {row['ray2_all']}"
    init = f" | ray.init {row['ray1']['init']:.1f} s"
    return " | ".join(parts) + f" | removed {removed}" + runs + init


if __name__ == "__main__":
    main()
