"""Why the flywheel is not moving, in words a user can act on; the cycle runs that failed.

    flywheel report [--history]      the per-cycle table, then the champion, the loop's state,
                                     why it is stuck and the failures not yet made good

``failure_summary`` is state: the failed cycle runs that no later run of the same cycle made
good (a successful rerun supersedes a failure, ``flywheel.core.loop_record``).
``failure_history`` is history: every failure ever recorded, with the run that resolved it.
``stuck_reason`` reads the catalog and the cycles' manifests and says, in one line, what keeps
the next cycle from starting: a cycle that accepted fewer than ``cycles.threshold_rows`` new
rows (with its top rejection reasons and the gate score of the model that generated them), an
unresolved failure (its step and error), a stopped loop (``cycles.patience``,
``cycles.max_cycles``), or no seed model; None while the loop can move on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from flywheel.core import products as P
from flywheel.core.catalog import Catalog, CycleRun
from flywheel.core.loop_record import FAILED, SUCCEEDED
from flywheel.core.shards import has_current, read_current
from flywheel.core.spec import Spec
from flywheel.loop import cycles, promotion, runs

TOP_REASONS = 3  # rejection reasons named in a stuck reason
CHECK_FAILED = "blocking asset check failed"  # how Dagster words a failed blocking check


@dataclass(frozen=True)
class Failure:
    """A failed cycle run as a user reads it: where it failed and why, on one line."""

    cycle: int | None
    run_id: str
    step: str | None  # the asset that failed, or "<asset>: <check>" for a failed check
    error: str  # the error on one line
    finished_at: datetime  # UTC
    resolved_by: str | None = None  # the later successful run of the same cycle, if any

    def line(self) -> str:
        cycle = "a cycle" if self.cycle is None else f"cycle {self.cycle}"
        if self.step and CHECK_FAILED in self.error:  # the error only restates the check
            return f"{cycle} run {self.run_id}: check {self.step} failed"
        at = f" at {self.step}" if self.step else ""
        return f"{cycle} run {self.run_id}{at}: {self.error[:300]}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "finished_at": self.finished_at.isoformat()}


def _failure(run: CycleRun, resolved_by: str | None = None) -> Failure:
    error = " ".join(run.message.split())
    step = run.step
    if step and CHECK_FAILED in error:  # "...severity: accepted_generations: not_empty"
        step = error.rpartition("severity: ")[2] or step
    return Failure(run.cycle, run.run_id, step, error, run.finished_at, resolved_by)


def failure_summary(spec: Spec) -> list[Failure]:
    """The failed cycle runs no later run of the same cycle made good, oldest first: the
    loop's failures as state (empty: nothing failed, or every failure was rerun to success)."""
    return [_failure(run) for run in runs.failures(spec)]


def failure_history(spec: Spec) -> list[Failure]:
    """Every failed cycle run ever recorded, oldest first, each with the run that resolved
    it (the first later successful run of the same cycle) or None."""
    runs = Catalog.open(spec.catalog).cycle_runs()
    out = []
    for f in (r for r in runs if r.status == FAILED):
        later = [
            s.run_id
            for s in runs
            if s.status == SUCCEEDED and s.cycle == f.cycle and s.finished_at > f.finished_at
        ]
        out.append(_failure(f, later[0] if later else None))
    return out


def stuck_reason(spec: Spec) -> str | None:
    """Why the next cycle does not start, or None while the loop can move on.

    Example: "0 of 4,000 generations accepted in cycle 0 (incorrect: 3,990, ...); the seed
    model scores 0.0000 on accuracy/addition; 0 new rows, fewer than
    cycles.threshold_rows=50, so cycle 1 is not started; cycle 0 run 1f2e...: check
    accepted_generations: not_empty failed".
    """
    state = promotion.loop_state(spec)
    failed = failure_summary(spec)
    said = []
    starved = None if state.stopped else _starved(spec, state)
    if starved:
        said.append(starved)
    if failed:
        said.append(failed[-1].line())
        if len(failed) > 1:
            said.append(f"{len(failed) - 1} earlier unresolved failure(s): flywheel report")
    if state.stopped:
        said.append(f"the loop {state.reason}")
    elif state.last_cycle is None and not failed and not has_current(spec.product_dir(P.SFT)):
        said.append("no seed model yet: materialize flywheel_job first (flywheel run)")
    return "; ".join(said) or None


def starved(spec: Spec) -> str | None:
    """Why the sensor will start no further cycle although the loop has not stopped: the last
    decided cycle accepted fewer than ``cycles.threshold_rows`` new rows; else None."""
    state = promotion.loop_state(spec)
    return None if state.stopped else _starved(spec, state)


def _starved(spec: Spec, state: promotion.LoopState) -> str | None:
    """The last decided cycle accepted too few new rows for the next one to start."""
    if state.last_cycle is None:
        return None
    last, nxt = state.last_cycle, state.next_cycle
    threshold = spec.cycles.threshold_rows
    if has_current(cycles.training_set_root(spec, nxt)):
        return None  # the next cycle has started
    new = cycles.new_accepted_rows(spec, nxt)
    agent = spec.agent is not None
    root = (cycles.accepted_trajectories_root if agent else cycles.accepted_root)(spec, last)
    if new >= threshold or not has_current(root):
        return None  # enough data, or the last cycle has not accepted its generations yet
    m = read_current(root).manifest
    if agent:  # accepted trajectories count episodes
        counts = m.get("counts", {})
        text = f"{counts.get('accepted', 0):,} of {counts.get('trajectories', 0):,} episodes"
        text += f" accepted in cycle {last}"
    else:
        text = f"{m.get('accepted', 0):,} of {m.get('generations', 0):,} generations accepted"
        text += f" in cycle {last}"
    reasons = sorted(m.get("reasons", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    if reasons:
        shown = ", ".join(f"{r}: {n:,}" for r, n in reasons[:TOP_REASONS])
        more = ", ..." if len(reasons) > TOP_REASONS else ""
        text += f" ({shown}{more})"
    generator = _generator(spec, last)
    if generator:
        text += f"; {generator}"
    return (
        f"{text}; {new:,} new row(s), fewer than cycles.threshold_rows={threshold}, "
        f"so cycle {nxt} is not started"
    )


def _generator(spec: Spec, cycle: int) -> str | None:
    """The gate score of the model that generated cycle ``cycle``'s data: the champion that
    cycle's decision left."""
    promoted = [d for d in promotion.decisions(spec) if d.promoted and d.cycle <= cycle]
    if not promoted:
        return None
    d = promoted[-1]
    who = "the seed model" if d.cycle == 0 else f"the champion (cycle {d.cycle}'s candidate)"
    return f"{who} scores {d.value:.4f} on {d.metric}"
