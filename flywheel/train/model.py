"""Build the causal LM a stage trains: from a transformers config in the spec, or a local path.

The default is a tiny Llama-style decoder (``flywheel.core.settings.train``); any transformers
causal-LM ``model_type`` works, and ``model.path`` starts from a local checkpoint. Nothing is
downloaded: configs are built in memory and paths must exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from flywheel.core.artifacts import ArtifactError
from flywheel.core.settings.train import ModelSettings


def model_config(
    settings: ModelSettings, vocab_size: int, seq_len: int, special: dict[str, int] | None = None
) -> PretrainedConfig:
    """The config of a fresh model: the spec's config plus the tokenizer's vocabulary."""
    kwargs: dict[str, Any] = dict(settings.config)
    model_type = kwargs.pop("model_type")
    kwargs.setdefault("vocab_size", vocab_size)
    kwargs.setdefault("max_position_embeddings", seq_len)
    kwargs.update(special or {})
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"model.config: cannot build a {model_type!r} config: {exc}") from None


def build_model(
    settings: ModelSettings,
    vocab_size: int,
    seq_len: int,
    special: dict[str, int] | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A freshly initialised model (seeded), or the checkpoint at ``settings.path``."""
    if settings.path is not None:
        return load_model(settings.path, settings.attn_implementation)
    config = model_config(settings, vocab_size, seq_len, special)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        config, attn_implementation=settings.attn_implementation, dtype=torch.float32
    )


def load_model(path: Path, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A local Hugging Face checkpoint directory (safetensors), with a clear error if absent."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ArtifactError(f"no model checkpoint at {path} (config.json missing)")
    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=torch.float32, local_files_only=True
    )


def count_parameters(model: torch.nn.Module, non_embedding: bool = False) -> int:
    """Distinct parameters (tied weights once); ``non_embedding`` drops the token embedding."""
    seen: set[int] = set()
    total = 0
    emb = model.get_input_embeddings().weight if non_embedding else None
    for p in model.parameters():
        if id(p) in seen or (emb is not None and p is emb):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def flops_per_token(config: PretrainedConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token, 6·N + 12·L·d·T (PaLM appendix B; N without embeddings)."""
    return 6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * seq_len
