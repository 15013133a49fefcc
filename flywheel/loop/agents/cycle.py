"""Agent trajectories as cycle products: ``trajectories`` and ``accepted_trajectories``.

    python -m pytest -q tests/loop/agents/test_cycle.py
    python -c "from flywheel.core.spec import load_spec; from flywheel.loop import cycles; \
from flywheel.loop.agents.cycle import build_trajectories as b; s = load_spec(); \
print(b(s, 1, cycles.cycle_inputs(s, 'trajectories', 1)).version)"

Only with the spec's ``agent`` section. ``build_trajectories`` is handed the champion cycle
``c``'s decision left (``promoted_model``, as ``synthetic_generations`` reads it); the champion
plays ``agent.episodes`` training episodes of ``agent.environment`` (its module's
``train_episodes(count, settings, seed)``, which never draws a held-out episode), each
``samples_per_episode`` times, through the batched collector (``collect``) with the policy of
``agent.backend`` (in-process transformers, or an OpenAI-compatible endpoint); the rows
(``trajectories.SCHEMA``) are a shard set under ``<data_dir>/cycles/<c>/trajectories``. Its
build key is the champion's version, the ``agent`` section (less ``accept``), the environment's
entry and module source, and the seed (``agent.seed`` and the cycle): a rerun with an equal key
reuses the set and loads no model.

``build_accepted_trajectories`` filters that set (``accept.accept_trajectories``, the held-out
leak guard on the environment's ``held_out_episodes``) into the accepted shards and the aux
table ``rejected`` (every other row, with its ``reason``); the manifest counts both, by reason.
``evaluate_held_out`` plays the fixed held-out episodes greedily and gives
``env/<name>/success``, ``mean_reward``, ``mean_turns``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from flywheel.core import artifacts, keys
from flywheel.core import products as P
from flywheel.core.catalog import Catalog
from flywheel.core.settings.agents import AgentSettings, EnvironmentSpec
from flywheel.core.shards import Built, ShardSet
from flywheel.core.spec import Spec
from flywheel.envs.load import factory_settings, load_environment, module_function
from flywheel.loop.agents.accept import AcceptSettings, accept_trajectories
from flywheel.loop.agents.collect import CollectSettings, Policy, collect
from flywheel.loop.agents.trajectories import canonical, publish_trajectories
from flywheel.loop.cycles import (
    accepted_trajectories_root,
    check_cycle_inputs,
    trajectories_root,
)

SEED_STRIDE = 100_003  # agent.seed * SEED_STRIDE + cycle: distinct per (seed, cycle) pair


@dataclass(frozen=True)
class AgentEnvironment:
    """The ``agent.environment`` entry, loaded: its factory and its episode functions."""

    entry: EnvironmentSpec
    factory: Callable[[], Any]
    settings: Any  # the class's validated Settings, or None
    train_episodes: Callable[..., list[dict[str, Any]]]
    held_out_episodes: Callable[..., list[dict[str, Any]]] | None

    @property
    def name(self) -> str:
        return self.entry.name

    def held_out(self) -> list[dict[str, Any]]:
        return [] if self.held_out_episodes is None else self.held_out_episodes(self.settings)


def agent_settings(spec: Spec) -> AgentSettings:
    if spec.agent is None:
        raise ValueError("the spec has no `agent` section: there are no agent products")
    return spec.agent


def agent_environment(spec: Spec) -> AgentEnvironment:
    """The environment ``agent.environment`` names, imported and its settings validated."""
    name = agent_settings(spec).environment
    entry = next(e for e in spec.environments if e.name == name)  # the spec checked it exists
    factory = load_environment(entry, spec.base_dir)
    train = module_function(entry.class_path, spec.base_dir, "train_episodes")
    if train is None:
        module = entry.class_path.partition(":")[0]
        raise ValueError(
            f"environment {name!r} ({entry.class_path}): module {module} has no "
            "train_episodes(count, settings, seed) function to draw the cycle's episodes from"
        )
    held = module_function(entry.class_path, spec.base_dir, "held_out_episodes")
    return AgentEnvironment(entry, factory, factory_settings(factory), train, held)


def collect_settings(agent: AgentSettings, samples: int = 1) -> CollectSettings:
    """How the agent plays: its turn budget, timeout and system prompt; ``samples`` a row."""
    return CollectSettings(agent.max_turns, agent.timeout_s, samples, agent.system_prompt)


def accept_settings(agent: AgentSettings) -> AcceptSettings:
    """``agent.accept`` as the filter's settings (group variance: reject flat groups)."""
    a = agent.accept
    return AcceptSettings(
        min_reward=a.min_reward,
        require_completed=a.require_completed,
        dedup=a.dedup,
        min_group_std=0.0 if a.group_variance else None,
        min_step_reward=a.min_step_reward,
    )


def episode_seed(agent: AgentSettings, cycle: int) -> int:
    return agent.seed * SEED_STRIDE + cycle


def trajectories_key(
    spec: Spec, cycle: int, handed: Mapping[str, Any], env: AgentEnvironment
) -> dict[str, str]:
    """What decides the trajectories: the champion, how it plays (``agent`` less ``accept``),
    the environment (entry and module source) and the seed."""
    agent = agent_settings(spec)
    sections = {
        "agent": agent.model_dump(mode="json", exclude={"accept"}),
        "environment": env.entry,
    }
    code = {"environment": keys.module_digest(env.entry.class_path)}
    seed = episode_seed(agent, cycle)
    return keys.make_key(P.versions(handed), sections, code=code, seed=seed, cycle=cycle)


def build_trajectories(
    spec: Spec, cycle: int, handed: Mapping[str, Any], policy: Policy | None = None
) -> Built:
    """The champion's episodes of cycle ``cycle``, published (or the current set, reused).
    ``policy`` (one with a ``tokenizer``): default the handed champion's, ``agent.backend``'s."""
    check_cycle_inputs(spec, P.TRAJECTORIES, cycle, handed)
    agent, env = agent_settings(spec), agent_environment(spec)
    champion: artifacts.Artifact = handed[P.PROMOTED]
    root, key = trajectories_root(spec, cycle), trajectories_key(spec, cycle, handed, env)
    found = keys.reusable(root, key)
    if found is not None:
        shards = ShardSet(found)
        return Built(shards, _flat(shards.manifest, "trajectories"), reused=True)
    built = keys.key_meta(root, key)
    seed = episode_seed(agent, cycle)
    episodes = env.train_episodes(agent.episodes, env.settings, seed=seed)
    own = policy is None
    policy = policy or champion_policy(spec, champion.path, seed, root)
    settings = collect_settings(agent, agent.samples_per_episode)
    started = time.monotonic()
    try:
        frame = collect(
            policy, policy.tokenizer, env.factory, episodes, env.name, env.entry.settings,
            settings, champion.version, cycle,
        )  # fmt: skip
    finally:
        if own and hasattr(policy, "close"):
            policy.close()  # a server started for this collection stops
    seconds = time.monotonic() - started
    meta = {
        "cycle": cycle,
        "checkpoint": champion.version,
        "environment": env.name,
        "episodes": len(episodes),
        "seconds": round(seconds, 3),
        "counts": _counts(frame),
        **built,
        "spec_fingerprint": spec.fingerprint(),
        "spec": spec.resolved(),
    }
    shards = publish_trajectories(root, frame, inputs=P.versions(handed), **meta)
    _record(spec, P.TRAJECTORIES, shards, "trajectories")
    return Built(shards, _flat(shards.manifest, "trajectories"))


def champion_policy(spec: Spec, checkpoint: Path, seed: int, log_dir: Path) -> Policy:
    """The policy ``agent.backend`` names, on ``checkpoint``, sampling as the agent does."""
    agent = agent_settings(spec)
    sampling = {"max_new_tokens": agent.max_new_tokens, "temperature": agent.temperature}
    if agent.backend == "openai":
        from flywheel.loop.agents.openai_policy import OpenAIPolicy

        return OpenAIPolicy(
            spec.generation.endpoint, checkpoint, agent.openai_mode, seed=seed,
            log_dir=log_dir / "server-logs", **sampling,
        )  # fmt: skip
    from flywheel.loop.agents.hf_policy import TransformersPolicy

    return TransformersPolicy.from_checkpoint(checkpoint, seed=seed, **sampling)


def build_accepted_trajectories(spec: Spec, cycle: int, handed: Mapping[str, Any]) -> Built:
    """Cycle ``cycle``'s trajectories split into accepted (the shards) and rejected (aux
    ``rejected``, with reasons); every row is in exactly one."""
    check_cycle_inputs(spec, P.ACCEPTED_TRAJECTORIES, cycle, handed)
    agent, env = agent_settings(spec), agent_environment(spec)
    trajectories: ShardSet = handed[P.TRAJECTORIES]
    held_out = env.held_out()
    data = {"held-out episodes": keys.digest_bytes(canonical(held_out).encode())}
    key = keys.make_key(P.versions(handed), {"agent.accept": agent.accept}, data)
    root = accepted_trajectories_root(spec, cycle)
    found = keys.reusable(root, key)
    if found is not None:
        shards = ShardSet(found)
        return Built(shards, _flat(shards.manifest, "accepted"), reused=True)
    a = agent.accept
    settings = accept_settings(agent)
    accepted, rejected = accept_trajectories(trajectories.read(), settings, held_out)
    n = accepted.height + rejected.height
    reasons = Counter(rejected["reason"].to_list())
    meta = {
        "cycle": cycle,
        "trajectories_version": trajectories.version,
        "counts": {"trajectories": n, "accepted": accepted.height, "rejected": rejected.height},
        "reasons": dict(sorted(reasons.items())),
        "accept_rate": accepted.height / n if n else None,
        "accept": a.model_dump(mode="json"),
        "held_out_episodes": len(held_out),
        **keys.key_meta(root, key),
        "spec": spec.resolved(),
    }
    shards = publish_trajectories(root, accepted, rejected, P.versions(handed), **meta)
    _record(spec, P.ACCEPTED_TRAJECTORIES, shards, "accepted")
    # Each episode's verdict, as acceptance records generations: flywheel lineage <episode_id>
    # says which checkpoint played it, why it was kept or not, and which training sets hold it.
    verdicts = pl.concat(
        [
            accepted.select("episode_id", "group_id", "checkpoint").with_columns(
                pl.lit("accepted").alias("status"), pl.lit(None, pl.String).alias("reason")
            ),
            rejected.select("episode_id", "group_id", "checkpoint", "reason").with_columns(
                pl.lit("rejected").alias("status")
            ),
        ],
        how="diagonal",
    ).rename({"episode_id": "generation_id", "group_id": "prompt_id"})
    Catalog.open(spec.catalog).record_generations(cycle, verdicts, shards.version)
    return Built(shards, _flat(shards.manifest, "accepted"))


def evaluate_held_out(
    spec: Spec, checkpoint_dir: Path, policy: Policy | None = None, cycle: int = 0
) -> dict[str, float]:
    """Greedy play of the environment's fixed held-out episodes: ``env/<name>/success`` (done,
    no error, reward >= ``accept.min_reward``, 1.0 when null), ``mean_reward``, ``mean_turns``."""
    agent, env = agent_settings(spec), agent_environment(spec)
    episodes = env.held_out()
    if not episodes:
        raise ValueError(f"environment {env.name!r} has no held-out episodes to evaluate on")
    if policy is None:
        from flywheel.loop.agents.hf_policy import TransformersPolicy

        policy = TransformersPolicy.from_checkpoint(
            Path(checkpoint_dir), max_new_tokens=agent.max_new_tokens, temperature=0.0
        )
    settings = collect_settings(agent)
    frame = collect(
        policy, policy.tokenizer, env.factory, episodes, env.name, env.entry.settings, settings,
        str(checkpoint_dir), cycle,
    )  # fmt: skip
    threshold = 1.0 if agent.accept.min_reward is None else agent.accept.min_reward
    success = pl.col("done") & pl.col("error").is_null() & (pl.col("reward") >= threshold)
    row = frame.select(
        success.mean().alias("success"),
        pl.col("reward").mean().alias("mean_reward"),
        pl.col("num_turns").mean().alias("mean_turns"),
    ).row(0, named=True)
    return {f"env/{env.name}/{k}": float(v) for k, v in row.items()}


def _counts(frame: pl.DataFrame) -> dict[str, Any]:
    if frame.is_empty():
        return {"rows": 0}
    row = frame.select(
        pl.len().alias("rows"),
        pl.col("done").sum().alias("done"),
        pl.col("truncated").sum().alias("truncated"),
        pl.col("error").is_not_null().sum().alias("errors"),
        pl.col("reward").mean().alias("mean_reward"),
        pl.col("num_turns").mean().alias("mean_turns"),
    ).row(0, named=True)
    return {k: v if isinstance(v, float) else int(v) for k, v in row.items()}


def _flat(manifest: dict[str, Any], kind: str) -> dict[str, Any]:
    """The manifest's numbers as flat metadata (``rejected/<reason>`` for accepted sets)."""
    flat: dict[str, Any] = {"cycle": manifest["cycle"], "version": manifest["version"]}
    flat |= {k: v for k, v in manifest["counts"].items() if v is not None}
    if kind == "accepted":
        flat |= {f"rejected/{r}": n for r, n in manifest["reasons"].items()}
        if manifest.get("accept_rate") is not None:
            flat["accept_rate"] = manifest["accept_rate"]
    else:
        flat |= {k: manifest[k] for k in ("checkpoint", "environment", "seconds")}
    flat["build_changes"] = "; ".join(manifest.get(keys.CHANGES, []))
    return flat


def _record(spec: Spec, product: str, shards: ShardSet, kind: str) -> None:
    catalog = Catalog.open(spec.catalog)
    metadata = _flat(shards.manifest, kind)
    catalog.record_materialization(product, shards.version, spec.fingerprint(), metadata)
