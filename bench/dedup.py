"""Benchmark of flywheel's dedup engine on a real corpus built from text on this machine.

    .venv/bin/python bench/dedup.py [--max-docs N] [--baseline-mb MB]

Corpus (no downloads): module/class/function docstrings of every .py file in the venv's
site-packages and the stdlib (parsed with ``ast``, never imported), dist-info METADATA and
LICENSE files, ``pydoc_data.topics``, /usr/share/common-licenses, text files under
/usr/share/doc (.gz decompressed) and man pages (troff stripped lightly). Documents have >= 1
word and are capped at 100 KB; their order is shuffled with a fixed seed (arrival order).

Measures, in one run: (a) this implementation's signature throughput (single process) and
end-to-end wall time; (b) datasketch's per-shingle ``MinHash.update`` loop + ``MinHashLSH``
on a random subsample (its MB/s extrapolates linearly: the loop is per shingle); (c) precision
and recall of the REMOVED set against exact-Jaccard ground truth at the threshold: exact
normalized duplicates, plus docs with an earlier doc at exact J >= t, found by prefix-filtered
set-similarity join (exact: any pair with J >= t shares a token in the prefixes of rarest
tokens) and verified on the pure-Python shingle sets. The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import random
import re
import sys
import sysconfig
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel.data.dedup import DedupSettings, MinHasher, deduplicate, normalize, shingles  # noqa: E402

CAP = 100_000  # characters per document
BINARY = {
    ".png",
    ".gif",
    ".jpg",
    ".jpeg",
    ".svg",
    ".pdf",
    ".ico",
    ".woff",
    ".ttf",
    ".so",
    ".pyc",
    ".mo",
    ".db",
    ".bz2",
    ".xz",
    ".zip",
    ".jar",
    ".class",
    ".bin",
    ".dat",
}


# -- corpus ------------------------------------------------------------------------------
def docstrings(path: str) -> list[tuple[str, str]]:
    """(id, docstring) of the module and every class and function of one source file."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, kinds) and (doc := ast.get_docstring(node)):
            name = getattr(node, "name", "<module>")
            out.append((f"py:{path}:{name}:{getattr(node, 'lineno', 0)}", doc))
    return out


def read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\x00" in data[:4096]:
        return None
    return data.decode("utf-8", "replace")


_TROFF_ESCAPES = re.compile(r"\\f[BIRP1-4]|\\f\(..|\\s[+-]?\d|\\\(..|\\[&|^%]")


def strip_troff(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):  # a request: keep its arguments (".SH NAME" -> "NAME")
            parts = line[1:].split(maxsplit=1)
            line = parts[1] if len(parts) > 1 else ""
        out.append(_TROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\"))
    return "\n".join(out)


def file_docs() -> list[tuple[str, str]]:
    """METADATA/LICENSE files, pydoc topics, licenses, /usr/share/doc and man pages."""
    import pydoc_data.topics

    docs = [(f"topic:{k}", v) for k, v in sorted(pydoc_data.topics.topics.items())]
    roots = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])]
    for root in roots:
        for p in sorted(root.glob("**/*.dist-info/*")):
            if p.name == "METADATA" or p.name.upper().startswith(("LICENSE", "COPYING")):
                docs.append((f"file:{p}", read_text(p) if p.is_file() else None))
    for p in sorted(Path("/usr/share/common-licenses").glob("*")):
        docs.append((f"file:{p}", read_text(p) if p.is_file() else None))
    for p in sorted(Path("/usr/share/doc").glob("**/*")):
        if p.is_file() and not p.is_symlink() and p.suffix.lower() not in BINARY:
            docs.append((f"file:{p}", read_text(p)))
    for p in sorted(Path("/usr/share/man").glob("**/*")):
        if p.is_file() and not p.is_symlink():
            text = read_text(p)
            docs.append((f"man:{p}", strip_troff(text) if text else None))
    return [(i, t) for i, t in docs if t]


def build_corpus(max_docs: int | None) -> tuple[list[str], list[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in Path(sysconfig.get_paths()["purelib"]).rglob("*.py"))
    files += sorted(str(p) for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    with Pool(2) as pool:
        docs = [d for chunk in pool.imap(docstrings, files, chunksize=32) for d in chunk]
    docs += file_docs()
    docs = [(i, t[:CAP]) for i, t in docs if t.split()]
    random.Random(0).shuffle(docs)
    docs = docs[:max_docs] if max_docs else docs
    return [i for i, _ in docs], [t for _, t in docs]


# -- (b) the datasketch baseline ---------------------------------------------------------
def datasketch_baseline(texts: list[str], threshold: float, num_perm: int) -> dict[str, float]:
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=num_perm, seed=1)
    started = time.perf_counter()
    sketches = []
    for text in texts:
        m = MinHash(
            num_perm=num_perm, seed=1, permutations=template.permutations, scheme=template.scheme
        )
        for sh in shingles(text):
            m.update(" ".join(sh).encode("utf-8", "surrogatepass"))
        sketches.append(m)
    sig_s = time.perf_counter() - started
    index, removed = MinHashLSH(threshold=threshold, num_perm=num_perm), 0
    for i, m in enumerate(sketches):
        if any(sketches[j].jaccard(m) >= threshold for j in index.query(m)):
            removed += 1
        index.insert(i, m)
    return {"sig_s": sig_s, "wall_s": time.perf_counter() - started, "removed": removed}


# -- (c) exact-Jaccard ground truth --------------------------------------------------------
def ground_truth(texts: list[str], t: float, ngram: int) -> tuple[np.ndarray, dict]:
    """Docs with an earlier exact normalized duplicate or an earlier doc at exact J >= t."""
    n = len(texts)
    positive, first, reps = np.zeros(n, dtype=bool), {}, []
    for i, text in enumerate(texts):
        key = normalize(text)
        if key in first:
            positive[i] = True
        else:
            first[key] = i
            reps.append(i)
    # tokens: Python's (per-process) hash of each shingle tuple; exact J is checked on sets
    token_lists = [np.fromiter(map(hash, shingles(texts[i], ngram)), dtype=np.int64) for i in reps]
    sizes = np.array([len(x) for x in token_lists], dtype=np.int64)
    doc = np.repeat(np.array(reps, dtype=np.int64), sizes)
    tokens = np.concatenate(token_lists)
    _, tid, freq = np.unique(tokens, return_inverse=True, return_counts=True)
    # prefix filter: order each doc's tokens rarest first; if J(x, y) >= t then
    # |x & y| >= t * max(|x|, |y|), so the first |x| - ceil(t |x|) + 1 tokens of x and of y meet
    order = np.lexsort((tid, freq[tid], doc))
    doc, tid = doc[order], tid[order]
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    rank = np.arange(doc.size) - starts
    size_of = np.repeat(sizes, sizes)
    prefix = size_of - np.ceil(t * size_of - 1e-9).astype(np.int64) + 1
    pre = pl.DataFrame({"doc": doc, "tid": tid, "size": size_of}).filter(pl.Series(rank < prefix))
    pairs = (
        pre.join(pre, on="tid", suffix="_e")
        .filter(pl.col("doc_e") < pl.col("doc"))
        .filter(pl.col("size_e") >= t * pl.col("size"), pl.col("size") >= t * pl.col("size_e"))
        .select("doc", "doc_e")
        .unique()
        .sort("doc", "doc_e")
    )
    sets: dict[int, set] = {}
    near = 0
    for d, group in pairs.group_by("doc", maintain_order=True):
        d = int(d[0])
        a = sets.setdefault(d, shingles(texts[d], ngram))
        for e in group["doc_e"].to_list():
            b = sets.setdefault(e, shingles(texts[e], ngram))
            if len(a & b) >= t * len(a | b) - 1e-9:
                positive[d], near = True, near + 1
                break
    info = {"exact": int(n - len(reps)), "near": near, "pairs": pairs.height}
    return positive, info


# -- the run -------------------------------------------------------------------------------
def measure_ours(ids: list[str], texts: list[str], settings: DedupSettings) -> dict:
    """Signature throughput (signatures only, and with sketches) and end-to-end dedup, with
    the default sketch verification and with signature-agreement verification."""
    hasher = MinHasher(
        settings.num_perm, settings.ngram, settings.lowercase, settings.seed, settings.sketch_size
    )
    hasher.signatures(texts[:2000])  # warm the power tables
    started = time.perf_counter()
    hasher.signatures(texts)
    sig_s = time.perf_counter() - started
    started = time.perf_counter()
    hasher.sketches(hasher.normalize(texts))
    sketch_s = time.perf_counter() - started
    runs = {}
    for mode in ("sketch", "signature"):
        started = time.perf_counter()
        result = deduplicate(ids, texts, settings.model_copy(update={"verify": mode}))
        runs[mode] = (result, time.perf_counter() - started)
    return {"sig_s": sig_s, "sketch_s": sketch_s, "runs": runs, "hasher": hasher}


def subsample(texts: list[str], mb: float) -> tuple[list[str], float]:
    """The first documents (of the shuffled corpus: a random sample) up to ``mb`` MB."""
    sub, size = [], 0.0
    for x in texts:
        sub.append(x)
        size += len(x.encode("utf-8", "surrogatepass")) / 1e6
        if size >= mb:
            break
    return sub, size


def scores(removed: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = int((removed & truth).sum())
    return tp / max(int(removed.sum()), 1), tp / max(int(truth.sum()), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-docs", type=int, default=None, help="cap the corpus (default: all)")
    ap.add_argument("--baseline-mb", type=float, default=4.0, help="datasketch subsample size")
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    settings = DedupSettings(threshold=args.threshold)
    t0 = time.perf_counter()
    ids, texts = build_corpus(args.max_docs)
    mb = sum(len(x.encode("utf-8", "surrogatepass")) for x in texts) / 1e6
    print(f"corpus: {len(texts)} docs, {mb:.1f} MB, built in {time.perf_counter() - t0:.0f} s")
    ours = measure_ours(ids, texts, settings)
    sub, sub_mb = subsample(texts, args.baseline_mb)
    base = datasketch_baseline(sub, settings.threshold, settings.num_perm)
    started = time.perf_counter()
    ours["hasher"].signatures(sub)
    ours["sub_s"] = time.perf_counter() - started
    started = time.perf_counter()
    truth, info = ground_truth(texts, settings.threshold, settings.ngram)
    info["seconds"] = time.perf_counter() - started
    report(settings, len(texts), mb, ours, (len(sub), sub_mb, base), truth, info, t0)


def report(settings, docs: int, mb: float, ours: dict, baseline, truth, info, t0) -> None:
    """The readable table, then one line of key=value pairs."""
    n_sub, sub_mb, base = baseline
    result, wall_s = ours["runs"]["sketch"]
    s, sig_mb_s, base_mb_s = result.stats, mb / ours["sig_s"], sub_mb / base["sig_s"]
    precision, recall = scores(~result.keep, truth)
    sig_p, sig_r = scores(~ours["runs"]["signature"][0].keep, truth)
    rows = {
        "docs / MB": f"{docs} / {mb:.1f}",
        "LSH bands x rows": f"{s['bands']} x {s['rows']} (num_perm {settings.num_perm})",
        "ours: signatures": f"{ours['sig_s']:.1f} s, {docs / ours['sig_s']:,.0f} docs/s, "
        f"{sig_mb_s:.1f} MB/s (1 process)",
        "ours: + bottom-512 sketches": f"{ours['sketch_s']:.1f} s, "
        f"{mb / ours['sketch_s']:.1f} MB/s",
        "ours: end-to-end dedup": f"{wall_s:.1f} s ({s['signature_seconds']:.1f} s signatures"
        f" + sketches, {s['candidate_pairs']} candidate pairs)",
        "ours: removed": f"{s['removed']} ({s['exact_removed']} exact, "
        f"{s['minhash_removed']} minhash)",
        "datasketch subsample": f"{n_sub} docs, {sub_mb:.1f} MB",
        "datasketch: signatures": f"{base['sig_s']:.1f} s, {n_sub / base['sig_s']:,.0f} docs/s, "
        f"{base_mb_s:.2f} MB/s; ~{mb / base_mb_s:.0f} s for the corpus (extrapolated)",
        "datasketch: + MinHashLSH": f"{base['wall_s']:.1f} s, removed {base['removed']}",
        "ours on the subsample": f"{ours['sub_s']:.2f} s, {sub_mb / ours['sub_s']:.1f} MB/s",
        "ground truth": f"{int(truth.sum())} dups ({info['exact']} exact, {info['near']} near at "
        f"J >= {settings.threshold}); {info['pairs']} pairs checked, {info['seconds']:.0f} s",
        "precision / recall": f"{precision:.4f} / {recall:.4f} (verify=sketch, the default)",
        "  with verify=signature": f"{sig_p:.4f} / {sig_r:.4f} "
        f"({ours['runs']['signature'][1]:.1f} s)",
    }
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    print(
        f"docs={docs} mb={mb:.1f} sig_mb_s={sig_mb_s:.2f} baseline_sig_mb_s={base_mb_s:.3f} "
        f"ratio={sig_mb_s / base_mb_s:.1f} precision={precision:.4f} recall={recall:.4f} "
        f"wall_s={wall_s:.1f} total_s={time.perf_counter() - t0:.0f}"
    )


if __name__ == "__main__":
    main()
