"""Preflight: everything a spec refers to, checked before a run spends time on it.

    flywheel check [SPEC] [key.path=value ...]     (flywheel run runs it first, too)

``load_spec`` checks a spec's shape; ``preflight`` checks what the shape points at, so that a
missing file, a verifier that does not import or a gate on a metric nothing produces stops a
run in seconds instead of failing the stage that first uses it, an hour in:

- ``paths``: every ``Path`` field of the settings models (found by walking them, so a new
  one is covered) exists as the file or directory its stage reads;
- ``references`` (with ``verifiers``): the spec's plugins, every verifier (acceptance's and
  each eval task's: kind, imported function, pattern), the gate metric, eval task names, the
  preference method against its settings and the verifier;
- ``environments``: each ``environments`` class imports from the spec's directory, its
  settings pass its ``Settings`` model, and every tool has the JSON schema TRL renders;
- ``samples``: the head of every data file (sources and their globs, SFT files, eval task
  files, prompt files), parsed by the same reader as its stage;
- ``images``: every ``images.sources`` entry's files exist, and their head decodes through
  the image ingest's reader and checker.

Every problem is reported at once, each naming the spec key and the file.

May import: every plane (core, data, train, loop); only the CLI and the Dagster layer use it.
"""

from __future__ import annotations

from flywheel.core.spec import Spec
from flywheel.preflight.environments import check_environments
from flywheel.preflight.images import check_images
from flywheel.preflight.paths import check_paths
from flywheel.preflight.problems import Problem
from flywheel.preflight.references import check_references
from flywheel.preflight.samples import check_samples

__all__ = ["Problem", "errors", "preflight"]


def preflight(spec: Spec) -> list[Problem]:
    """Every problem in ``spec`` that would stop or silently spoil a run: errors, then
    warnings, each group in the order paths, references, environments, samples, images."""
    problems = [*check_paths(spec), *check_references(spec), *check_environments(spec)]
    problems += [*check_samples(spec), *check_images(spec)]
    return sorted(problems, key=lambda p: p.level != "error")  # stable: keeps check order


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]
