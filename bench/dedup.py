"""Benchmark of flywheel's dedup engine on a real corpus built from text on this machine.

    .venv/bin/python bench/dedup.py [--max-docs N] [--text-mb MB] [--threshold T]

Corpus (no downloads): module/class/function docstrings of every .py file in the venv's
site-packages and the stdlib (parsed with ``ast``, never imported), dist-info METADATA and
LICENSE files, ``pydoc_data.topics``, /usr/share/common-licenses, text files under
/usr/share/doc (.gz decompressed) and man pages (troff stripped lightly). Documents have >= 1
word and are capped at 100 KB; their order is shuffled with a fixed seed (arrival order).
``--max-docs`` keeps the first N of that order (a random sample; the corpus is still built).

Measures, in one run, on the same corpus:
(a) this implementation: signature throughput from text (single process) and end-to-end
    ``deduplicate`` wall time (verify=sketch, the default, and verify=signature);
(b) datasketch's fastest path on the WHOLE corpus: ``MinHash.bulk`` fed each document's set
    of 32-bit shingle hashes as computed by our engine (same shingles, same hashes, handed over
    untimed), ``MinHashLSH`` with the same num_perm and bands x rows filled in an insertion
    session, then one query per document verified by ``MinHash.jaccard``. Only the MinHash and
    LSH engines are compared, and ours is timed from text, so ``ratio`` is conservative;
(c) optionally (``--text-mb``, 0 skips) datasketch fed from text as usually done, Python
    shingles hashed by its default sha1, by the per-shingle ``MinHash.update`` loop and by
    ``MinHash.bulk``, on a random subsample only (extrapolated linearly to the corpus);
(d) precision and recall of both engines' REMOVED sets against exact-Jaccard ground truth at
    the threshold: exact normalized duplicates, plus docs with an earlier doc at exact J >= t,
    found by prefix-filtered set-similarity join (exact: any pair with J >= t shares a token in
    the prefixes of rarest tokens) and verified on the pure-Python shingle sets.

The last line is key=value pairs: ``ratio`` = datasketch's end-to-end seconds / ours (> 1:
ours is faster), ``sig_ratio`` the same for signatures alone, ``precision``/``recall`` ours
(default settings) and ``ds_precision``/``ds_recall`` datasketch's.
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


# -- (b), (c) the datasketch baselines ---------------------------------------------------
def shingle_hash_sets(texts: list[str], settings: DedupSettings) -> tuple[list[np.ndarray], float]:
    """Each document's set of distinct 32-bit shingle hashes, exactly the values our
    signatures take the minimum over: bottom-m sketches with m above any document's shingle
    count (a 100 KB document has < 50,000 words) are the whole sets. Views, not copies."""
    hasher = MinHasher(settings.num_perm, settings.ngram, settings.lowercase, settings.seed, CAP)
    started = time.perf_counter()
    sk = hasher.sketches(hasher.normalize(texts))
    assert int(sk.lengths.max()) < CAP, "a shingle set was truncated"
    ends = np.cumsum(sk.lengths)
    sets = [sk.values[e - n : e] for e, n in zip(ends.tolist(), sk.lengths.tolist(), strict=True)]
    return sets, time.perf_counter() - started


def datasketch_fastest(sets: list[np.ndarray], settings: DedupSettings) -> dict:
    """datasketch's fastest CPU path on the whole corpus: ``MinHash.bulk`` (one
    ``update_batch`` per document, numpy over its shingles) on our shingle hashes with
    ``hashfunc=int`` (the cheapest per-value call; it then applies its own fmix32 and affine32
    permutations), ``MinHashLSH`` with our bands x rows filled in an insertion session, then
    each document queried: removed iff an EARLIER document among its candidates has estimated
    Jaccard >= t (datasketch's ``MinHash.jaccard``, i.e. our ``verify=signature`` rule)."""
    from datasketch import MinHash, MinHashLSH

    t, n = settings.threshold, len(sets)
    started = time.perf_counter()
    sketches = MinHash.bulk(sets, num_perm=settings.num_perm, seed=settings.seed, hashfunc=int)
    sig_s = time.perf_counter() - started
    lsh = MinHashLSH(threshold=t, num_perm=settings.num_perm, params=settings.resolve_bands())
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m, check_duplication=False)
    index_s = time.perf_counter() - started - sig_s
    removed = np.fromiter(
        (
            any(j < i and sketches[j].jaccard(m) >= t for j in lsh.query(m))
            for i, m in enumerate(sketches)
        ),
        dtype=bool,
        count=n,
    )
    wall_s = time.perf_counter() - started
    return {"sig_s": sig_s, "index_s": index_s, "wall_s": wall_s, "removed": removed}


def datasketch_from_text(texts: list[str], settings: DedupSettings) -> dict[str, float]:
    """How datasketch is usually fed, on a subsample: our ``shingles`` sets in Python, each
    shingle's UTF-8 bytes hashed by its default sha1_hash32. Seconds for signatures (with the
    shingling) by the per-shingle ``MinHash.update`` loop and by ``MinHash.bulk``."""
    from datasketch import MinHash

    def shingle_bytes(text: str) -> list[bytes]:
        sets = shingles(text, settings.ngram, settings.lowercase)
        return [" ".join(sh).encode("utf-8", "surrogatepass") for sh in sets]

    kw = {"num_perm": settings.num_perm, "seed": settings.seed}
    template = MinHash(**kw)
    started = time.perf_counter()
    for text in texts:
        m = MinHash(**kw, permutations=template.permutations, scheme=template.scheme)
        for b in shingle_bytes(text):
            m.update(b)
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    MinHash.bulk((shingle_bytes(x) for x in texts), **kw)
    return {"loop_s": loop_s, "bulk_s": time.perf_counter() - started}


# -- (d) exact-Jaccard ground truth ----------------------------------------------------
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
    return {"sig_s": sig_s, "sketch_s": sketch_s, "runs": runs}


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
    ap.add_argument(
        "--text-mb", type=float, default=4.0,
        help="subsample for datasketch fed from text (update loop, bulk); 0 skips it",
    )  # fmt: skip
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ids, texts = build_corpus(args.max_docs)
    print(f"corpus: {len(texts)} docs, built in {time.perf_counter() - t0:.0f} s")
    run(ids, texts, DedupSettings(threshold=args.threshold), args.text_mb, t0)


def run(ids: list[str], texts: list[str], settings: DedupSettings, text_mb: float, t0: float):
    """Everything measured on one corpus (in arrival order), then the report."""
    mb = sum(len(x.encode("utf-8", "surrogatepass")) for x in texts) / 1e6
    ours = measure_ours(ids, texts, settings)
    sets, prep_s = shingle_hash_sets(texts, settings)
    fast = datasketch_fastest(sets, settings)
    fast.update(prep_s=prep_s, shingles=sum(map(len, sets)))
    del sets
    naive = None
    if text_mb > 0:
        sub, sub_mb = subsample(texts, text_mb)
        naive = {"docs": len(sub), "mb": sub_mb, **datasketch_from_text(sub, settings)}
    started = time.perf_counter()
    truth, info = ground_truth(texts, settings.threshold, settings.ngram)
    info["seconds"] = time.perf_counter() - started
    report(settings, len(texts), mb, ours, fast, naive, truth, info, t0)


def report(settings, docs: int, mb: float, ours: dict, fast: dict, naive, truth, info, t0):
    """The readable table, then one line of key=value pairs."""
    result, wall_s = ours["runs"]["sketch"]
    s, sig_mb_s, ds_mb_s = result.stats, mb / ours["sig_s"], mb / fast["sig_s"]
    precision, recall = scores(~result.keep, truth)
    sig_p, sig_r = scores(~ours["runs"]["signature"][0].keep, truth)
    ds_p, ds_r = scores(fast["removed"], truth)
    query_s = fast["wall_s"] - fast["sig_s"] - fast["index_s"]
    rows = {
        "docs / MB": f"{docs} / {mb:.1f}",
        "LSH bands x rows": f"{s['bands']} x {s['rows']} (num_perm {settings.num_perm}), "
        "both engines",
        "ours: signatures from text": f"{ours['sig_s']:.1f} s, {docs / ours['sig_s']:,.0f} "
        f"docs/s, {sig_mb_s:.1f} MB/s (1 process)",
        "ours: + bottom-512 sketches": f"{ours['sketch_s']:.1f} s, "
        f"{mb / ours['sketch_s']:.1f} MB/s",
        "ours: end-to-end dedup": f"{wall_s:.1f} s ({s['signature_seconds']:.1f} s signatures"
        f" + sketches, {s['candidate_pairs']} candidate pairs)",
        "ours: removed": f"{s['removed']} ({s['exact_removed']} exact, "
        f"{s['minhash_removed']} minhash)",
        "datasketch input": f"our {fast['shingles']:,} shingle hashes, handed over for free "
        f"(computing them took us {fast['prep_s']:.1f} s)",
        "datasketch: MinHash.bulk": f"{fast['sig_s']:.1f} s, {docs / fast['sig_s']:,.0f} "
        f"docs/s, {ds_mb_s:.1f} MB/s of the corpus's text",
        "datasketch: + MinHashLSH": f"{fast['wall_s']:.1f} s ({fast['index_s']:.1f} s "
        f"insertion session, {query_s:.1f} s queries + jaccard), removed "
        f"{int(fast['removed'].sum())}",
    }
    if naive:
        rows["datasketch from text"] = (
            f"subsample of {naive['docs']} docs, {naive['mb']:.1f} MB, Python shingles + sha1:"
            f" update loop {naive['mb'] / naive['loop_s']:.2f} MB/s, bulk "
            f"{naive['mb'] / naive['bulk_s']:.2f} MB/s (~{mb * naive['loop_s'] / naive['mb']:.0f}"
            f" s / ~{mb * naive['bulk_s'] / naive['mb']:.0f} s for the corpus, extrapolated)"
        )
    rows |= {
        "ground truth": f"{int(truth.sum())} dups ({info['exact']} exact, {info['near']} near at "
        f"J >= {settings.threshold}); {info['pairs']} pairs checked, {info['seconds']:.0f} s",
        "precision / recall, ours": f"{precision:.4f} / {recall:.4f} (verify=sketch, the default)",
        "  with verify=signature": f"{sig_p:.4f} / {sig_r:.4f} "
        f"({ours['runs']['signature'][1]:.1f} s)",
        "  datasketch": f"{ds_p:.4f} / {ds_r:.4f}",
        "speed-up, same corpus": f"{fast['wall_s'] / wall_s:.2f}x end to end, "
        f"{fast['sig_s'] / ours['sig_s']:.2f}x signatures (ours from text, datasketch from "
        "our hashes)",
    }
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    extra = f"text_loop_mb_s={naive['mb'] / naive['loop_s']:.3f} " if naive else ""
    print(
        f"docs={docs} mb={mb:.1f} wall_s={wall_s:.2f} ds_wall_s={fast['wall_s']:.2f} "
        f"ratio={fast['wall_s'] / wall_s:.2f} sig_mb_s={sig_mb_s:.2f} ds_sig_mb_s={ds_mb_s:.2f} "
        f"sig_ratio={fast['sig_s'] / ours['sig_s']:.2f} {extra}precision={precision:.4f} "
        f"recall={recall:.4f} ds_precision={ds_p:.4f} ds_recall={ds_r:.4f} "
        f"total_s={time.perf_counter() - t0:.0f}"
    )


if __name__ == "__main__":
    main()
