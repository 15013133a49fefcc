"""Promotion: a cycle's candidate replaces the champion only if it beats it on the gate.

    flywheel report            every cycle's candidate, score and decision

``promote`` is handed what it reads (``flywheel.loop.cycles.cycle_inputs(spec,
"promoted_model", c)``: the cycle's eval, its candidate, and ``promoted_model/<c-1>``, the
champion before) and records one ``Decision`` per cycle, with those versions as its
``inputs``, in the catalog's ``cycles`` table, the only record of promotion: the champion is
the newest promoted candidate, and ``champion_after(c)`` the newest promoted at or before
cycle ``c``. Deciding reads the decisions and writes one under a file lock (a lock, not a
record), so two runs deciding one cycle decide once and two cycles can never both win against
the same champion: the champion it was handed must still be the one the decisions under the
lock name. ``loop_state`` says whether the loop may go on: ``cycles.patience`` cycles in a row
without a promotion, or ``cycles.max_cycles``, stop it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog, Decision
from flywheel.core.settings.loop import GateSettings
from flywheel.core.spec import Spec
from flywheel.loop.accept import CheckOutcome
from flywheel.loop.cycles import (
    SFT,
    check_cycle_inputs,
    checkpoint_root,
    eval_root,
    locked,
    promoted_dir,
    read_champion,
)


# -- candidates, eval and promotion --------------------------------------------------------
def candidate(spec: Spec, cycle: int) -> artifacts.Artifact:
    """The model a cycle produced: cycle 0 adopts the current seed SFT checkpoint."""
    if cycle == 0:
        return artifacts.read_current(spec.product_dir(SFT))
    return artifacts.read_current(checkpoint_root(spec, cycle))


def eval_scores(spec: Spec, cycle: int) -> dict[str, Any]:
    """The published eval report of a cycle's candidate (``scores.json``)."""
    return _scores(artifacts.read_current(eval_root(spec, cycle), deep=False))


def _scores(report: artifacts.Artifact) -> dict[str, Any]:
    return json.loads((report.path / "scores.json").read_text())


def decisions(spec: Spec) -> list[Decision]:
    """Every promotion decision so far, by cycle."""
    return Catalog.open(spec.catalog).decisions()


def _newest_promoted(done: list[Decision], up_to: int | None = None) -> Decision | None:
    promoted = [d for d in done if d.promoted and (up_to is None or d.cycle <= up_to)]
    return promoted[-1] if promoted else None


def champion(spec: Spec) -> Decision | None:
    """The decision that made the current champion (its ``candidate`` is the champion), or
    None before cycle 0 is decided."""
    return _newest_promoted(decisions(spec))


def champion_after(spec: Spec, cycle: int) -> artifacts.Artifact:
    """The champion as cycle ``cycle``'s decision left it: the newest candidate promoted at
    or before that cycle. Fixed once decided, so rerunning a cycle retrains from (and
    generates with) the same model even after later cycles changed the champion."""
    return read_champion(spec, cycle)


def _better(value: float, best: float, gate: GateSettings) -> bool:
    if gate.mode == "max":
        return value > best + gate.min_delta
    return value < best - gate.min_delta


def _gate_value(spec: Spec, cycle: int, report: artifacts.Artifact, version: str) -> float:
    """The candidate's score on ``cycles.gate.metric``, from ``report``, an eval of it."""
    scores, metric = _scores(report), spec.cycles.gate.metric
    if scores.get("checkpoint") != version:
        raise RuntimeError(
            f"cycle {cycle}'s eval scored {scores.get('checkpoint')}, but its candidate "
            f"is {version}: evaluate the candidate first"
        )
    if metric not in scores:
        known = ", ".join(sorted(k for k in scores if isinstance(scores[k], int | float)))
        raise KeyError(f"gate metric {metric!r} is not in the eval scores ({known})")
    return float(scores[metric])


def _verdict(
    value: float, version: str, champ: Decision | None, gate: GateSettings
) -> tuple[bool, str]:
    if champ is None:
        return True, "first champion"
    if champ.candidate == version:
        return False, "already the champion"
    promoted = _better(value, champ.value, gate)
    sign = ">" if promoted else "<="
    reason = f"{gate.metric} {value:.4f} {sign} champion {champ.value:.4f}"
    return promoted, reason + (f" + {gate.min_delta}" if gate.min_delta else "")


def promote(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> Decision:
    """Decide whether cycle ``cycle``'s candidate becomes the champion; record the decision.

    ``handed``: the inputs ``cycle_inputs(spec, "promoted_model", cycle)`` gives, recorded as
    the decision's ``inputs``. The candidate must beat the champion cycle ``cycle - 1`` left
    by more than ``cycles.gate.min_delta`` on ``cycles.gate.metric``; cycle 0 (no champion
    yet) is promoted. Deciding again with the same build key (the versions handed and
    ``cycles.gate``) returns the recorded decision, so a rerun never flips a promotion; a
    changed key decides again, recording what changed, unless a later cycle is decided
    (``keys.StaleError``, see ``flywheel.loop.cycle_keys``).
    """
    check_cycle_inputs(spec, P.PROMOTED, cycle, handed)
    cand: artifacts.Artifact = handed[P.CYCLE_CHECKPOINT]
    key = keys.make_key(P.versions(handed), {"cycles.gate": spec.cycles.gate})
    catalog = Catalog.open(spec.catalog)
    with locked(promoted_dir(spec)):  # one decision at a time, across threads and processes
        done = {d.cycle: d for d in catalog.decisions()}
        prior = done.get(cycle)
        if prior is not None and _same_decision(prior, key, cand.version):
            return prior
        changed = keys.changes(prior.build_key, key) if prior is not None else []
        _check_replaceable(cycle, done, changed)
        if cycle > 0 and cycle - 1 not in done:
            raise RuntimeError(f"cycle {cycle - 1} has no promotion decision; decide it first")
        value = _gate_value(spec, cycle, handed[P.CYCLE_EVAL], cand.version)
        champ = _newest_promoted(list(done.values()), up_to=cycle - 1)
        _check_champion(cycle, handed, champ)
        promoted, reason = _verdict(value, cand.version, champ, spec.cycles.gate)
        decision = Decision(
            cycle=cycle,
            candidate=cand.version,
            candidate_path=str(cand.path),
            metric=spec.cycles.gate.metric,
            value=value,
            champion_before=champ.candidate if champ else None,
            champion_value=champ.value if champ else None,
            promoted=promoted,
            reason=reason,
            decided_at=datetime.now(UTC),
            inputs=P.versions(handed),
            build_key=key,
            build_changes=changed,
        )
        catalog.record_decision(decision)
    return decision


def _same_decision(prior: Decision, key: dict[str, str], candidate: str) -> bool:
    """Whether ``prior`` was decided with ``key`` (a decision recorded before keys were:
    with the same candidate)."""
    return prior.build_key == key if prior.build_key else prior.candidate == candidate


def _check_replaceable(cycle: int, done: Mapping[int, Decision], changed: list[str]) -> None:
    """A decision that a later cycle's decision built on (the champion it left) stays: the
    later cycles trained from and generated with that champion."""
    later = sorted(c for c in done if c > cycle)
    if changed and later:
        raise keys.stale(
            f"cycle {cycle}'s promotion decision cannot be made again: cycle {later[0]} was "
            f"already decided against the champion it left, and what it was decided from changed",
            changed,
            f"Start a new cycle (after cycle {later[-1]}) for the new candidate instead.",
        )


def _check_champion(cycle: int, handed: Mapping[str, Any], champ: Decision | None) -> None:
    """The champion ``handed`` must be the one the decisions name now (read under the lock):
    a cycle decided again since it was resolved makes it stale."""
    name = P.of_cycle(P.PROMOTED, cycle - 1)
    was = handed[name].version if name in handed else None
    now = champ.candidate if champ else None
    if was != now:
        raise RuntimeError(
            f"cycle {cycle}'s promotion was handed champion {was}, but the decisions now name "
            f"{now}: resolve its inputs again (cycle_inputs)"
        )


def champion_checks(spec: Spec) -> list[CheckOutcome]:
    """Guards on the champion before it generates: its files verify, and no promoted
    candidate scored better."""
    done = decisions(spec)
    champ = _newest_promoted(done)
    if champ is None:
        return [CheckOutcome("champion_verified", False, "no champion has been promoted")]
    try:
        artifacts.verify(Path(champ.candidate_path))
        verified, problem = True, ""
    except artifacts.ArtifactError as exc:
        verified, problem = False, str(exc)
    description = problem or "checkpoint files match the manifest"
    meta = {"checkpoint": champ.candidate}
    out = [CheckOutcome("champion_verified", verified, description, meta)]
    gate = spec.cycles.gate
    promoted = [d for d in done if d.promoted]
    best = [d for d in promoted if _better(d.value, champ.value, gate)]
    desc = (
        f"the champion's {gate.metric} {champ.value:.4f} is the best of every promoted candidate"
        if not best
        else f"cycle {best[0].cycle} scored {best[0].value:.4f}, better than the champion"
    )
    out.append(CheckOutcome("champion_is_best", not best, desc, {"promotions": len(promoted)}))
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
    last = done[-1].cycle if done else None
    settings = spec.cycles
    streak = 0
    for d in reversed(done):
        if d.promoted:
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
