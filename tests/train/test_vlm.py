"""The tiny LLaVA: save/load round trip, the project's LM inside it, assistant-only labels, and
real SFT and DPO steps with TRL on CPU (a 1-layer, 32-wide LM; each run takes about a second)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flywheel.core.report import Reporter
from flywheel.core.settings.loop import PreferenceSettings
from flywheel.core.settings.train import ModelSettings, SftSettings
from flywheel.data.visual import shape_examples
from flywheel.train.vlm.generate import answer, answer_logprobs
from flywheel.train.vlm.model import (
    IMAGE_TOKEN,
    VisionTower,
    build_vlm,
    load_vlm,
    save_vlm,
)
from flywheel.train.vlm.train import dpo_example, sft_example, train_vlm_dpo, train_vlm_sft

TINY_LM = ModelSettings(
    config={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    }
)
MAX_LENGTH = 64  # 16 image tokens + the chat turns


def _texts(n: int = 200) -> list[str]:
    return [
        f"<|im_start|>user\n{e['prompt']}<|im_end|>\n<|im_start|>assistant\n{e['answer']}<|im_end|>\n"
        for e in shape_examples(n, 1, 9, 32, seed=99)
    ]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flywheel.train.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(_texts(), vocab_size=300, min_frequency=2, out_dir=out)
    return out


def _tokenizer(path: Path) -> Any:
    from flywheel.train.tokenizer import load_tokenizer

    return load_tokenizer(path)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    model, processor = build_vlm(_tokenizer(tokenizer_dir), text=TINY_LM, max_length=MAX_LENGTH)
    return save_vlm(model, processor, tmp_path_factory.mktemp("vlm"))


def _problems(n: int, seed: int) -> list[dict[str, Any]]:
    return shape_examples(n, 1, 3, 32, seed)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_save_load_round_trip(tmp_path: Path, tokenizer_dir: Path, kind: str) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    tower = VisionTower(kind)
    model, processor = build_vlm(_tokenizer(tokenizer_dir), tower, TINY_LM, MAX_LENGTH)
    save_vlm(model, processor, tmp_path)
    loaded, proc = load_vlm(tmp_path)
    # transformers' own loaders read the directory too (what vLLM's Llava reads).
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "LlavaProcessor"
    LlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert type(proc.image_processor).__name__.endswith("ImageProcessorPil")  # no torchvision
    assert proc.image_token_id == loaded.config.image_token_index
    assert proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == proc.image_token_id
    problems = _problems(3, seed=0)
    batch = proc(
        images=[p["image"] for p in problems],
        text=[f"{IMAGE_TOKEN}{p['prompt']}" for p in problems],
        return_tensors="pt",
    )
    # The processor expands each image into exactly the features the tower gives it.
    assert (batch["input_ids"] == proc.image_token_id).sum(1).tolist() == [tower.image_tokens] * 3
    with torch.no_grad():
        before, after = model(**batch).logits, loaded(**batch).logits
    torch.testing.assert_close(before, after)
    assert (
        proc.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
        == problems[0]["prompt"]
    )


def test_the_language_model_keeps_its_weights(tmp_path: Path, tokenizer_dir: Path) -> None:
    from flywheel.train.model import build_model

    tok = _tokenizer(tokenizer_dir)
    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    lm = build_model(TINY_LM, len(tok), MAX_LENGTH, special, seed=3)
    lm.save_pretrained(tmp_path / "lm")
    model, processor = build_vlm(_tokenizer(tokenizer_dir), text=tmp_path / "lm")
    assert processor.image_token_id == len(tok)  # one token added, after the LM's vocabulary
    ids = tok("<|im_start|>user\nHow many shapes?<|im_end|>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text_only = model(input_ids=ids).logits[..., : len(tok)]
        torch.testing.assert_close(text_only, lm(input_ids=ids).logits)


def test_chat_template_renders_text_as_the_tokenizer_does(vlm_dir: Path) -> None:
    from flywheel.train.tokenizer import CHAT_TEMPLATE

    _, processor = load_vlm(vlm_dir)
    turns = [
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "How many?"},
        {"role": "assistant", "content": "3"},
    ]
    ours = processor.apply_chat_template(turns)
    assert ours == processor.tokenizer.apply_chat_template(
        turns, chat_template=CHAT_TEMPLATE, tokenize=False
    )
    image = [{"type": "image"}, {"type": "text", "text": "How many?"}]
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": image}], add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\n<image>\nHow many?<|im_end|>\n<|im_start|>assistant\n"


def test_labels_cover_exactly_the_assistant_answer(vlm_dir: Path) -> None:
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    _, processor = load_vlm(vlm_dir)
    collate = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    problems = _problems(2, seed=1)
    batch = collate([sft_example(p["image"], p["prompt"], p["answer"]) for p in problems])
    tok = processor.tokenizer
    for row, problem in zip(batch["labels"], problems, strict=True):
        assert tok.decode(row[row != -100]) == f"{problem['answer']}<|im_end|>"
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


def _reporter() -> Reporter:
    return Reporter()


def test_sft_steps_reduce_the_loss_on_a_fixed_batch(tmp_path: Path, vlm_dir: Path) -> None:
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    problems = _problems(8, seed=2)
    examples = [sft_example(p["image"], p["prompt"], p["answer"]) for p in problems]
    settings = SftSettings(
        steps=12, micro_batch=8, lr=1e-2, warmup_steps=0, save_every=100, max_length=MAX_LENGTH
    )
    with _reporter() as reporter:
        metrics = train_vlm_sft(
            settings, vlm_dir, examples, tmp_path / "w", tmp_path / "m", reporter
        )
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == 0
    losses = []
    for path in (vlm_dir, tmp_path / "m"):
        model, processor = load_vlm(path)
        batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(
            [dict(e) for e in examples]
        )
        with torch.no_grad():
            losses.append(model(**batch).loss.item())
    assert losses[1] < 0.5 * losses[0], losses
    assert (tmp_path / "m" / "processor_config.json").exists()  # saved with its processor
    assert len(answer(model, processor, problems[:2])) == 2


def test_sft_resumes_from_its_newest_checkpoint(tmp_path: Path, vlm_dir: Path) -> None:
    problems = _problems(8, seed=3)
    examples = [sft_example(p["image"], p["prompt"], p["answer"]) for p in problems]
    settings = SftSettings(
        steps=6,
        micro_batch=4,
        lr=3e-3,
        warmup_steps=0,
        save_every=2,
        keep_checkpoints=3,
        max_length=MAX_LENGTH,
    )
    work = tmp_path / "w"
    with _reporter() as reporter:
        train_vlm_sft(settings, vlm_dir, examples, work, tmp_path / "whole", reporter)
        assert sorted(p.name for p in work.glob("checkpoint-*")) == [
            "checkpoint-2",
            "checkpoint-4",
            "checkpoint-6",
        ]
        # A crash after step 4: the last checkpoint was never written.
        import shutil

        shutil.rmtree(work / "checkpoint-6")
        metrics = train_vlm_sft(settings, vlm_dir, examples, work, tmp_path / "resumed", reporter)
    assert metrics["resumed_from_step"] == 4 and metrics["steps"] == 6
    whole, _ = load_vlm(tmp_path / "whole")
    resumed, _ = load_vlm(tmp_path / "resumed")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_dpo_moves_the_preference_margin(tmp_path: Path, vlm_dir: Path) -> None:
    problems = _problems(8, seed=4)
    wrong = {"1": "3", "2": "1", "3": "2"}
    examples = [
        dpo_example(p["image"], p["prompt"], p["answer"], wrong[p["answer"]]) for p in problems
    ]
    settings = PreferenceSettings(
        steps=6, micro_batch=8, lr=3e-3, warmup_steps=0, beta=0.1, max_length=MAX_LENGTH
    )
    with _reporter() as reporter:
        metrics = train_vlm_dpo(
            settings, vlm_dir, examples, tmp_path / "w", tmp_path / "m", reporter
        )
    assert metrics["preference/steps"] == 6
    rejected = [p | {"answer": wrong[p["answer"]]} for p in problems]

    def margin(path: Path) -> float:
        model, processor = load_vlm(path)
        chosen = answer_logprobs(model, processor, problems)
        other = answer_logprobs(model, processor, rejected)
        return sum(c - r for c, r in zip(chosen, other, strict=True)) / len(problems)

    start, end = margin(vlm_dir), margin(tmp_path / "m")
    assert end > start + 0.5, (start, end)  # log-prob margin of chosen over rejected, in nats
    assert metrics["preference/last/rewards/margins"] > 0
    json.dumps(metrics)  # plain values: the manifest and the catalog keep them
