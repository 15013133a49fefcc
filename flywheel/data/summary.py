"""``flywheel summary``: one row per product of the data and training planes, from the
manifests alone (rows, the stage's headline rates, the version).

    flywheel summary [--json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.shards import has_current, read_current
from flywheel.core.spec import Spec

FILTERED, DROPPED, DEDUPLICATED = P.FILTERED, P.DROPPED, P.DEDUPLICATED


def summary(spec: Spec) -> list[dict[str, Any]]:
    """One row per data product: rows now, and the stage's headline rates."""
    out = []
    products = [P.raw(s.name) for s in spec.sources] + [FILTERED, DROPPED, DEDUPLICATED]
    for product in products:
        if not has_current(spec.product_dir(product)):
            out.append({"product": product, "rows": 0, "detail": "not materialized", "version": ""})
            continue
        shards = read_current(spec.product_dir(product))
        detail = _detail(product, shards.manifest)
        out.append(
            {
                "product": product,
                "rows": shards.num_rows,
                "detail": detail,
                "version": shards.version,
            }
        )
    return out + _training_summary(spec)


TRAINING_PRODUCTS = [P.TOKENIZER, P.TOKENIZED, P.PRETRAINED, P.SFT, P.EVAL]


def _training_summary(spec: Spec) -> list[dict[str, Any]]:
    """The training plane's products: the tokenized dataset and the published artifacts."""
    out = []
    for product in TRAINING_PRODUCTS:
        root = spec.product_dir(product)
        if product == P.TOKENIZED and has_current(root):
            m = read_current(root).manifest
            detail = f"{m.get('train_tokens')} train / {m.get('heldout_tokens')} held-out tokens"
            out.append(_row(product, m.get("num_rows"), detail, m.get("version", "")))
        elif product != P.TOKENIZED and artifacts.has_current(root):
            version = (root / "CURRENT").read_text().strip()
            meta = artifacts.read_meta(root / version)
            out.append(_row(product, "", _artifact_detail(product, root / version, meta), version))
        else:
            out.append(_row(product, "", "not materialized", ""))
    return out


def _row(product: str, rows: Any, detail: str, version: str) -> dict[str, Any]:
    return {"product": product, "rows": rows, "detail": detail, "version": version}


def _artifact_detail(product: str, path: Path, meta: dict[str, Any]) -> str:
    if product == P.TOKENIZER:
        return f"byte-level BPE, vocab {meta.get('vocab_size')} ({meta.get('source')})"
    if product == P.EVAL:
        scores = json.loads((path / "scores.json").read_text())
        shown = {k: round(v, 4) for k, v in scores.items() if "perplexity" in k or "accuracy" in k}
        return f"{meta.get('stage')} {meta.get('checkpoint')}: {shown}"
    m = meta.get("metrics", {})
    loss = f"{_num(m.get('first_loss'))} -> {_num(m.get('final_loss'))}"
    line = f"{m.get('steps')} steps, loss {loss}"
    # the VLM stages report examples, not a token rate
    rate = m.get("tokens_per_s")
    return line if rate is None else f"{line}, {_num(rate, 0)} tokens/s"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def _detail(product: str, m: dict[str, Any]) -> str:
    if product == FILTERED:
        rates = ", ".join(
            f"{k.removeprefix('keep_rate_')} {v}"
            for k, v in m.items()
            if k.startswith("keep_rate_")
        )
        return f"keep rate {m.get('keep_rate')} ({rates})"
    if product == DROPPED:
        return f"{m.get('dropped')} dropped, each with its reason"
    if product == DEDUPLICATED:
        return (
            f"{m.get('removed')} removed ({m.get('removed_exact')} exact, "
            f"{m.get('removed_minhash')} near) in {m.get('clusters')} clusters; "
            f"dedup rate {m.get('dedup_rate')}"
        )
    return f"{m.get('quarantined', 0)} quarantined {m.get('quarantine_by_reason') or ''}".strip()
