"""Promotion: a cycle's candidate replaces the champion only if it beats it on the gate.

    flywheel report            every cycle's candidate, score and decision

``promote`` records one decision per cycle (``promoted_model/decisions/<c>.json`` and the
catalog's ``cycles`` table) and, when the candidate wins, rewrites ``champion.json``
atomically, under a file lock, so two cycles can never both win against the same champion.
``loop_state`` says whether the loop may go on: ``cycles.patience`` cycles in a row without a
promotion, or ``cycles.max_cycles``, stop it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.settings.loop import GateSettings
from flywheel.core.shards import atomic_write_json
from flywheel.core.spec import Spec
from flywheel.loop.cycles import SFT, checkpoint_root, eval_root, locked, promoted_dir

# -- candidates, eval and promotion --------------------------------------------------------
CHAMPION = "champion.json"


def candidate(spec: Spec, cycle: int) -> artifacts.Artifact:
    """The model a cycle produced: cycle 0 adopts the current seed SFT checkpoint."""
    if cycle == 0:
        return artifacts.read_current(spec.product_dir(SFT))
    return artifacts.read_current(checkpoint_root(spec, cycle))


def eval_scores(spec: Spec, cycle: int) -> dict[str, Any]:
    """The published eval report of a cycle's candidate (``scores.json``)."""
    report = artifacts.read_current(eval_root(spec, cycle), deep=False)
    return json.loads((report.path / "scores.json").read_text())


def champion(spec: Spec) -> dict[str, Any] | None:
    """The champion record (cycle, checkpoint, path, metric, value), or None before cycle 0."""
    path = promoted_dir(spec) / CHAMPION
    return json.loads(path.read_text()) if path.exists() else None


def champion_after(spec: Spec, cycle: int) -> artifacts.Artifact:
    """The champion as cycle ``cycle``'s decision left it: the newest candidate promoted at
    or before that cycle. Fixed once decided, so rerunning a cycle retrains from (and
    generates with) the same model even after later cycles changed the champion."""
    promoted = [d for d in decisions(spec) if d["promoted"] and d["cycle"] <= cycle]
    if not promoted:
        raise FileNotFoundError(
            f"no model was promoted up to cycle {cycle}: materialize cycle 0 first"
        )
    return artifacts.verify(Path(promoted[-1]["candidate_path"]))


def decisions(spec: Spec) -> list[dict[str, Any]]:
    """Every promotion decision so far, by cycle."""
    folder = promoted_dir(spec) / "decisions"
    found = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(found, key=lambda d: d["cycle"])


def _better(value: float, best: float, gate: GateSettings) -> bool:
    if gate.mode == "max":
        return value > best + gate.min_delta
    return value < best - gate.min_delta


def promote(spec: Spec, cycle: int) -> dict[str, Any]:
    """Decide whether cycle ``cycle``'s candidate becomes the champion; record the decision.

    The candidate must beat the champion on ``cycles.gate.metric`` by more than
    ``min_delta``; cycle 0 (no champion yet) is promoted. Deciding again for the same
    candidate returns the recorded decision, so a rerun never flips a promotion.
    """
    gate = spec.cycles.gate
    cand = candidate(spec, cycle)
    folder = promoted_dir(spec) / "decisions"
    with locked(promoted_dir(spec)):  # one decision at a time, across processes
        recorded = folder / f"{cycle}.json"
        if recorded.exists():
            old = json.loads(recorded.read_text())
            if old["candidate"] == cand.version:
                return old
        if cycle > 0 and not (folder / f"{cycle - 1}.json").exists():
            raise RuntimeError(f"cycle {cycle - 1} has no promotion decision; decide it first")
        scores = eval_scores(spec, cycle)
        if scores.get("checkpoint") != cand.version:
            raise RuntimeError(
                f"cycle {cycle}'s eval scored {scores.get('checkpoint')}, but its candidate "
                f"is {cand.version}: evaluate the candidate first"
            )
        if gate.metric not in scores:
            known = ", ".join(sorted(k for k in scores if isinstance(scores[k], int | float)))
            raise KeyError(f"gate metric {gate.metric!r} is not in the eval scores ({known})")
        value = float(scores[gate.metric])
        champ = champion(spec)
        if champ is None:
            promoted, reason = True, "first champion"
        elif champ["checkpoint"] == cand.version:
            promoted, reason = False, "already the champion"
        else:
            promoted = _better(value, float(champ["value"]), gate)
            sign = ">" if promoted else "<="
            reason = f"{gate.metric} {value:.4f} {sign} champion {champ['value']:.4f}"
            if gate.min_delta:
                reason += f" + {gate.min_delta}"
        decision = {
            "cycle": cycle,
            "candidate": cand.version,
            "candidate_path": str(cand.path),
            "metric": gate.metric,
            "value": value,
            "champion_before": champ["checkpoint"] if champ else None,
            "champion_value": champ["value"] if champ else None,
            "promoted": promoted,
            "reason": reason,
            "decided_at": datetime.now(UTC).isoformat(),
        }
        if promoted:
            record = {
                "cycle": cycle,
                "checkpoint": cand.version,
                "path": str(cand.path),
                "metric": gate.metric,
                "value": value,
            }
            atomic_write_json(promoted_dir(spec) / CHAMPION, record)
        atomic_write_json(recorded, decision)
        Catalog(spec.catalog).record_cycle_decision(decision)
    return decision


def champion_checks(spec: Spec) -> list[tuple[str, bool, str, dict[str, Any]]]:
    """(name, passed, description, metadata) guards on the champion before it generates."""
    record = champion(spec)
    if record is None:
        return [("champion_verified", False, "no champion has been promoted", {})]
    try:
        artifacts.verify(Path(record["path"]))
        verified, problem = True, ""
    except artifacts.CheckpointError as exc:
        verified, problem = False, str(exc)
    out = [
        (
            "champion_verified",
            verified,
            problem or "checkpoint files match the manifest",
            {"checkpoint": record["checkpoint"]},
        )
    ]
    gate = spec.cycles.gate
    promoted = [d for d in decisions(spec) if d["promoted"]]
    best = [d for d in promoted if _better(d["value"], record["value"], gate)]
    desc = (
        f"the champion's {gate.metric} {record['value']:.4f} is the best of every "
        f"promoted candidate"
        if not best
        else f"cycle {best[0]['cycle']} scored {best[0]['value']:.4f}, better than the champion"
    )
    out.append(("champion_is_best", not best, desc, {"promotions": len(promoted)}))
    return out


# -- the loop's state ----------------------------------------------------------------------
@dataclass
class LoopState:
    last_cycle: int | None  # the newest cycle with a decision
    stopped: bool
    reason: str

    @property
    def next_cycle(self) -> int:
        return 0 if self.last_cycle is None else self.last_cycle + 1


def loop_state(spec: Spec) -> LoopState:
    """Whether the flywheel may start another cycle, and why not when it may not."""
    done = decisions(spec)
    last = done[-1]["cycle"] if done else None
    settings = spec.cycles
    streak = 0
    for d in reversed(done):
        if d["promoted"]:
            break
        streak += 1
    if streak >= settings.patience:
        return LoopState(
            last,
            True,
            f"stopped: {streak} cycle(s) in a row without promotion "
            f"(cycles.patience={settings.patience})",
        )
    if settings.max_cycles is not None and last is not None and last >= settings.max_cycles:
        return LoopState(last, True, f"stopped: cycle {last} reached cycles.max_cycles")
    return LoopState(last, False, "running")
