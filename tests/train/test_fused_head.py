"""TRL's fused LM head scoring only labelled positions: the same outputs and gradients as
scoring every position, from fewer projected rows (flywheel.train.fused_head)."""

import pytest
import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM, LlamaConfig
from trl.kernels import chunked_logprob

from flywheel.train.fused_head import score_labelled_positions_only

TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300)  # fmt: skip
OUTPUTS = ("log_probs", "entropy", "is_top1")


def _batch() -> dict[str, torch.Tensor]:
    """Two rows, the second padded; labels on a span of each (the model's turn), -100 elsewhere."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 5:12] = ids[0, 5:12]
    labels[1, 9:16] = ids[1, 9:16]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _run(batch: dict[str, torch.Tensor]) -> tuple[object, dict[str, torch.Tensor], list[int]]:
    """The fused forward's outputs, its gradients, and how many rows the head projected."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY), attn_implementation="sdpa")
    trl_utils.add_fused_lm_head(model, outputs=OUTPUTS)
    rows: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    trl_utils._ChunkedLogProbFunction.apply = spy
    try:
        out = model(**batch, fused_lm_head=True)
    finally:
        trl_utils._ChunkedLogProbFunction.apply = apply
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, rows


def test_scoring_labelled_positions_only_changes_nothing_but_the_rows(monkeypatch):
    # TRL's own choice (another test may have made the switch in this process), restored after
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    batch = _batch()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    every, every_grads, every_rows = _run(batch)
    assert every_rows == [2 * 23]  # on CPU, TRL alone projects every shifted position

    score_labelled_positions_only()
    score_labelled_positions_only()  # idempotent
    only, only_grads, only_rows = _run(batch)
    assert only_rows == [labelled]
    assert torch.allclose(only.loss, every.loss, atol=1e-6)
    for name in OUTPUTS:
        assert torch.allclose(getattr(only, name).float(), getattr(every, name).float(), atol=1e-5)
    assert torch.equal(only.label_mask, every.label_mask)
    assert only_grads.keys() == every_grads.keys()
    for name, grad in every_grads.items():
        assert torch.allclose(only_grads[name], grad, atol=1e-6), name


def test_a_trl_without_the_switch_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(RuntimeError, match="_use_triton is gone"):
        score_labelled_positions_only()
