"""Synthetic generation: k completions per prompt from a checkpoint, by a chosen backend.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1 --checkpoint DIR

``backends`` holds the backend protocol, the in-process transformers backend and offline
vLLM; ``endpoint`` the OpenAI-compatible client and the ``vllm serve`` process it can start;
``generations`` commits a cycle's ``synthetic_generations`` shard set (``generate_cycle``),
and ``__main__`` is its command line.
"""
