"""Agent trajectories: multi-turn tool-calling episodes collected from an environment.

    python -m pytest -q tests/loop/agents

``toolcalls`` is the convention the model calls tools with (Hermes/Qwen ``<tool_call>`` JSON,
the format TRL 1.16's Qwen response schema parses) and its parser; ``collect`` runs a batch of
episodes against ``flywheel.envs`` environments with a pluggable policy, one policy call per
turn for every live episode; ``hf_policy`` is the in-process transformers policy (left-padded
batched ``generate`` that keeps token ids and sampling logprobs); ``trajectories`` is the
Parquet schema they are stored in; ``accept`` filters a trajectory frame into accepted and
rejected-with-reason rows.

May import: ``flywheel.core``, ``flywheel.train`` (tokenizer and model loading, inside the
policy) and ``flywheel.envs.protocol`` (the tool list).
"""
