"""The build keys of a flywheel cycle's products, and the checks that refuse stale inputs.

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.cycle_keys import \
seed_fingerprint; print(seed_fingerprint(load_spec('flywheel.yaml')))"

Each cycle product stores a ``flywheel.core.keys`` build key (``build_key`` in its manifest or
decision, ``build_changes`` beside it) and is reused only when a rerun computes the same key:

- ``training_set``, cycle 0: the content of the seed SFT data (``sft.data``: its examples, so a
  fixed file, an edited ``extra`` set or a new generator seed all count, a moved file does
  not); cycle c: the versions of cycle c-1's and cycle 0's training sets and of the accepted
  sets read, and ``cycles.seed_replay``;
- ``cycle_checkpoint``: the fine-tuning run's fingerprint (``flywheel.train.finetune``), whose
  parts are the training settings, the champion, the training set's content and the
  preference data, settings and verifier source;
- ``cycle_eval_scores``: the candidate, the tokenized dataset, ``eval`` and the task files;
- ``promoted_model``: the eval, the candidate, the champion before and ``cycles.gate``;
- ``synthetic_generations``: the champion, ``generation`` and the prompts' content;
- ``accepted_generations``: the generations, the pools, ``acceptance`` and the verifier source.

What a user can expect when something a cycle was built from changes:

- a product whose key changed is rebuilt as a new version when its cycle is rerun, and its
  manifest says what changed; the products after it then see a new input version and are
  rebuilt in turn (never trained on what the old version held);
- a cycle never rebuilds another cycle's products. Cycle c >= 1 replays the seed rows of cycle
  0's training set: if the seed data changed since that set was built, the run fails naming
  the change (rerun cycle 0 first) instead of training on the old rows. Cycle 0 adopts the
  seed SFT model: if it was fine-tuned on other seed data, it fails the same way (re-train
  ``sft_checkpoint`` first);
- a promotion decision that a later cycle's decision already built on (its champion) is never
  replaced: deciding it again with a changed key is an error naming the change, since the
  later cycles trained from the champion it left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.spec import Spec

SEED = "seed data"  # the key part of cycle 0's training set: data:seed data
SEED_PART = f"data:{SEED}"
# The version of the training set's row building: bump it when the rows it makes from the
# same inputs change (columns, replay sampling), so that every set is rebuilt once.
TRAINING_SET_CODE = "1"


def seed_fingerprint(spec: Spec) -> str:
    """``sha256:...`` of the seed SFT data's examples (``sft.data`` as loaded): the same
    fingerprint SFT checkpoints record as their ``data_fingerprint``."""
    from flywheel.train.sft_data import data_fingerprint, load_sft_data

    if spec.vision is not None:  # the seed VLM's data: the current curated images
        from flywheel.loop.vision.data import seed_data

        return f"sha256:{data_fingerprint(seed_data(spec))}"
    return f"sha256:{data_fingerprint(load_sft_data(spec.sft.data))}"


def training_set_key(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> dict[str, str]:
    """The build key of cycle ``cycle``'s training set, from the inputs it is ``handed``;
    ``keys.StaleError`` if cycle 0's training set, whose seed rows a later cycle replays, was
    built from seed data other than ``sft.data``'s now."""
    code = {P.TRAINING_SET: TRAINING_SET_CODE}
    if cycle == 0:
        return keys.make_key(data={SEED: seed_fingerprint(spec)}, code=code, cycle=0)
    check_seed_set(spec, cycle, handed[P.of_cycle(P.TRAINING_SET, 0)])
    replay = {"cycles.seed_replay": spec.cycles.seed_replay}
    return keys.make_key(P.versions(handed), replay, code=code, cycle=cycle)


def check_seed_set(spec: Spec, cycle: int, seed_set: Any) -> None:
    """Refuse to replay the seed rows of cycle 0's training set ``seed_set`` if they are not
    those of ``sft.data`` now."""
    now = {SEED_PART: seed_fingerprint(spec)}
    built_with = (keys.key_of(seed_set) or {}).get(SEED_PART)
    if built_with == now[SEED_PART]:
        return
    changed = keys.changes({SEED_PART: built_with} if built_with else None, now)
    raise keys.stale(
        f"cycle {cycle}'s training set would replay the seed rows of cycle 0's training set "
        f"{seed_set.version}, but sft.data is not what that set was built from",
        changed,
        "Rerun cycle 0 first (dg launch --job cycle_job --partition 0), so that its "
        "training set holds the current seed data.",
    )


def check_seed_model(spec: Spec, model: artifacts.Artifact) -> artifacts.Artifact:
    """``model``, the seed SFT checkpoint cycle 0 adopts, if it was fine-tuned on the seed
    data ``sft.data`` holds now; ``keys.StaleError`` naming the change otherwise."""
    trained_on = model.meta.get("lineage", {}).get("data_fingerprint")
    now = {SEED_PART: seed_fingerprint(spec)}
    if trained_on is None or f"sha256:{trained_on}" == now[SEED_PART]:
        return model  # a checkpoint from elsewhere (no lineage) is taken as it is
    raise keys.stale(
        f"cycle 0 adopts sft_checkpoint {model.version}, but it was fine-tuned on other seed "
        "data than sft.data holds now",
        keys.changes({SEED_PART: f"sha256:{trained_on}"}, now),
        "Re-train the seed model first (flywheel train sft, or materialize sft_checkpoint).",
    )
