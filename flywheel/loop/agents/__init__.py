"""Agent trajectories: multi-turn tool-calling episodes collected from an environment.

    python -m pytest -q tests/loop/agents

``toolcalls`` is the convention the model calls tools with (Hermes/Qwen ``<tool_call>`` JSON,
the format TRL 1.16's Qwen response schema parses) and its parser; ``collect`` runs a batch of
episodes against ``flywheel.envs`` environments with a pluggable policy, one policy call per
turn for every live episode; ``hf_policy`` is the in-process transformers policy (a batched
sampling loop that keeps token ids and sampling logprobs, and each live episode's KV cache
between turns through ``prefix_cache``); ``trajectories`` is the
Parquet schema they are stored in; ``accept`` filters a trajectory frame into accepted and
rejected-with-reason rows. ``ppo_train`` is the compact PPO stage (a policy and a separate
value model from a parent checkpoint, KL to a frozen reference, resumable), on rollouts from
``ppo_rollouts`` (an environment through ``collect``, or single-turn prompts and a reward);
``grpo_env`` trains on an environment online, multi-turn GRPO with TRL's
``GRPOTrainer(environment_factory=...)``. ``teacher`` plays an environment with a scripted
teacher (seed SFT data); ``cycle``, ``cycle_rl`` and ``play`` are the agent's cycle stages.

May import: ``flywheel.core``, ``flywheel.train`` (tokenizer, model loading, the fine-tuning
helpers and the PPO math), ``flywheel.envs`` (the tool list, loading environments) and
``flywheel.loop.preference`` (the verifier as a reward, GRPO's settings checks).
"""
