"""bench/dedup.py's measurement and report, run in-process on a small planted corpus (its real
corpus takes minutes to build): both engines and the ground truth must find exactly the
planted duplicates, and the last line must carry the keys the README quotes."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from flywheel.data.dedup import DedupSettings

from .conftest import mutate, prose

BENCH = Path(__file__).resolve().parents[3] / "bench" / "dedup.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dedup", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_run_scores_both_engines_on_planted_duplicates(capsys) -> None:
    originals = prose(40)
    exact = originals[:5]  # 5 exact copies
    near = [mutate(t, 1, seed=i) for i, t in enumerate(originals[5:10])]  # J ~ 0.9+
    far = [mutate(t, len(t.split()) // 3, seed=i) for i, t in enumerate(originals[10:15])]
    texts = originals + exact + near + far
    ids = [f"d{i}" for i in range(len(texts))]

    load_bench().run(ids, texts, DedupSettings(), text_mb=0.05, t0=time.perf_counter())

    out = capsys.readouterr().out.strip().splitlines()
    pairs = dict(kv.split("=") for kv in out[-1].split())
    assert int(pairs["docs"]) == len(texts)
    assert float(pairs["ratio"]) > 0 and float(pairs["sig_ratio"]) > 0
    assert float(pairs["text_loop_mb_s"]) > 0
    for key in ("precision", "recall", "ds_precision", "ds_recall"):
        assert float(pairs[key]) == 1.0, (key, out)
    truth = next(line for line in out if line.startswith("ground truth"))
    assert "10 dups (5 exact, 5 near" in truth
