"""Evaluation: perplexity is exp(token-mean loss), generation is batch-invariant, verifiers
score known-correct answers as correct, and the entry point publishes a report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flywheel.core import artifacts
from flywheel.core.catalog import Catalog
from flywheel.core.report import Reporter
from flywheel.core.settings.train import EvalTask
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.eval.perplexity import heldout_perplexity
from flywheel.loop.eval.scores import score_tasks
from flywheel.loop.eval.tasks import evaluate_task, generate
from flywheel.train.loader import heldout_files
from flywheel.train.model import load_model
from flywheel.train.tokenizer import load_tokenizer

from .conftest import write_spec


@pytest.fixture
def pretrained(data_dir: Path) -> tuple[torch.nn.Module, object]:
    artifact = artifacts.read_current(data_dir / "pretrained_checkpoint")
    return load_model(artifact.path), load_tokenizer(artifact.path)


@pytest.fixture
def babbler(pretrained) -> tuple[torch.nn.Module, object]:
    """The tiny model with seeded noise on its weights: a fresh init only repeats one token
    (a newline), and generation tests need outputs that differ from prompt to prompt."""
    model, tok = pretrained
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model, tok


def test_perplexity_is_exp_of_the_token_mean_loss(data_dir: Path, pretrained) -> None:
    model, _ = pretrained
    files = heldout_files(read_current(data_dir / "tokenized_dataset"))
    result = heldout_perplexity(model, files, micro_batch=3, max_batches=100)
    assert math.isfinite(result["loss"])
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # Independently: the model's own mean loss over every held-out row in one batch (all
    # rows are full, so the token mean over batches equals it even with a partial batch).
    import pyarrow.parquet as pq

    rows = torch.tensor(pq.read_table(files[0]).column("input_ids").to_pylist())
    with torch.no_grad():
        direct = model(input_ids=rows, labels=rows).loss.item()
    assert result["loss"] == pytest.approx(direct, rel=1e-4)
    assert result["tokens"] == rows.shape[0] * (rows.shape[1] - 1)
    assert result["batches"] == math.ceil(rows.shape[0] / 3)
    capped = heldout_perplexity(model, files, micro_batch=3, max_batches=1)
    assert capped["batches"] == 1 and capped["tokens"] == 3 * (rows.shape[1] - 1)


def test_batched_left_padded_generation_matches_one_by_one(babbler) -> None:
    model, tok = babbler
    # Prompts of different token lengths, so the batch really is padded.
    prompts = ["What is 1 + 2?", "What is 17 - 12?", "Hi", "What is 10 + 10? Answer now."]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1  # not one repeated token: the comparison means something
    assert all("<|im_end|>" not in c for c in batched)  # special tokens are not decoded


def _task(path: Path, prompts: list[str], answers: list[str]) -> EvalTask:
    rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return EvalTask(name=path.stem, kind="jsonl", path=path, verifier="exact", max_new_tokens=4)


def test_task_accuracy_counts_verified_answers(tmp_path: Path, babbler) -> None:
    """A task whose answers are the model's own greedy outputs scores 1; altered ones 0."""
    model, tok = babbler
    prompts = [p["prompt"] for p in arithmetic_examples(6, 9, seed=5)]
    outputs = generate(model, tok, prompts, max_new_tokens=4, batch_size=4)

    right = evaluate_task(model, tok, _task(tmp_path / "right.jsonl", prompts, outputs), 3)
    assert (right.accuracy, right.n, right.correct) == (1.0, 6, 6)
    first = {"task": "right", "prompt": prompts[0], "answer": outputs[0]}
    messages = [{"role": "user", "content": prompts[0]}]
    assert right.rows[0] == {
        **first,
        "messages": messages,
        "completion": outputs[0],
        "correct": True,
        "reason": None,
    }

    altered = [o + "x" for o in outputs]
    wrong = evaluate_task(model, tok, _task(tmp_path / "wrong.jsonl", prompts, altered), 3)
    assert wrong.accuracy == 0.0 and len(wrong.samples(2)) == 2
    assert {r["reason"] for r in wrong.rows} == {"incorrect"}  # why each answer is wrong


def test_user_verifiers_next_to_the_spec_score_eval_tasks(
    tmp_path: Path, babbler, user_module
) -> None:
    """A kind python function and a kind a plugin registers, both in modules next to the
    spec, score eval tasks through score_tasks as they judge acceptance; wrong answers keep
    the verifier's reason."""
    model, tok = babbler
    prompts = [p["prompt"] for p in arithmetic_examples(6, 9, seed=5)]
    outputs = generate(model, tok, prompts, max_new_tokens=4, batch_size=4)
    answers = outputs[:3] + [o + "x" for o in outputs[3:]]
    rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fns = user_module(
        "evalfns",
        """
        def same(prompt, completion, answer):
            return completion.strip() == answer.strip(), f"expected {answer!r}"
        """,
    )
    plugin = user_module(
        "evalplugin",
        """
        from flywheel.loop.verifiers import register_verifier

        register_verifier("same_text", lambda completion, answer, pattern: completion == answer)
        """,
    )
    task = "kind: jsonl, path: qa.jsonl, max_new_tokens: 4"
    body = f"""
        plugins: [{plugin}]
        eval:
          tasks:
            - {{name: fn, {task}, verifier: {{kind: python, function: "{fns}:same"}}}}
            - {{name: registered, {task}, verifier: same_text}}
            - {{name: plain, {task}, verifier: exact}}
        """
    spec = load_spec(write_spec(tmp_path, body))
    metrics: dict[str, object] = {}
    fn, registered, plain = score_tasks(spec, model, tok, metrics, Reporter())
    assert metrics["accuracy/fn"] == metrics["accuracy/registered"] == 0.5
    assert metrics["accuracy/plain"] == 0.5  # the three agree
    assert [r["correct"] for r in fn.rows] == [True] * 3 + [False] * 3
    assert [r["reason"] for r in fn.rows[2:]] == [None] + [f"expected {a!r}" for a in answers[3:]]
    assert [r["reason"] for r in registered.rows[2:]] == [None] + ["incorrect"] * 3


def test_a_messages_task_is_scored_on_the_whole_conversation(tmp_path: Path, babbler) -> None:
    """A task file in messages form, with a system turn and an earlier exchange, is scored
    on the rendered conversation: the answers are the model's greedy continuations of the
    whole conversation, and a bad record is quarantined with its line and reason."""
    model, tok = babbler
    system = {"role": "system", "content": "Answer with digits only."}
    conversations = [
        [
            system,
            {"role": "user", "content": p["prompt"]},
            {"role": "assistant", "content": p["answer"]},
            {"role": "user", "content": "And 1 + 1?"},
        ]
        for p in arithmetic_examples(4, 9, seed=8)
    ]
    outputs = generate(model, tok, conversations, max_new_tokens=4, batch_size=4)
    lines = [{"messages": c, "answer": o} for c, o in zip(conversations, outputs, strict=True)]
    lines.append({"messages": conversations[0][1:2]})  # no answer
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    task = EvalTask(name="chat", kind="jsonl", path=path, verifier="exact", max_new_tokens=4)
    score = evaluate_task(model, tok, task, 3)
    assert (score.accuracy, score.n) == (1.0, 4)
    assert score.rows[0]["messages"] == conversations[0]
    assert score.rows[0]["prompt"] == "And 1 + 1?"
    assert [(q["line"], q["reason"]) for q in score.quarantine] == [(5, "missing_answer")]


def test_task_scores_every_record_of_a_file_longer_than_the_old_default(
    tmp_path: Path, babbler
) -> None:
    """n is the number really scored: all 130 usable records (num_examples used to cut at
    100), not counting the quarantined one."""
    model, tok = babbler
    prompts = [p["prompt"] for p in arithmetic_examples(130, 20, seed=6)]
    task = _task(tmp_path / "long.jsonl", prompts, ["1"] * 130).model_copy(
        update={"max_new_tokens": 1}
    )
    with open(task.path, "a") as f:
        f.write('{"prompt": "no answer"}\n')
    score = evaluate_task(model, tok, task, 65)
    assert (score.n, len(score.rows), len(score.quarantine)) == (130, 130, 1)


@pytest.mark.integration
def test_eval_entry_publishes_scores(tmp_path: Path, data_dir: Path) -> None:
    task_file = tmp_path / "qa.jsonl"
    task_file.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "bad"}\n')
    spec = write_spec(
        tmp_path,
        """
        data_dir: data
        catalog: catalog.duckdb
        eval:
          perplexity_batches: 2
          micro_batch: 4
          tasks:
            - {name: arithmetic, num_examples: 12, max_operand: 9, max_new_tokens: 4}
            - {name: qa, kind: jsonl, path: qa.jsonl, max_new_tokens: 4}
        """,
    )
    cmd = [sys.executable, "-m", "flywheel.loop.eval", "--spec", str(spec), "--stage", "pretrain"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    evaluated = artifacts.read_current(data_dir / "pretrained_checkpoint")
    report = artifacts.read_current(data_dir / "eval_scores")
    assert report.meta["checkpoint"] == evaluated.version
    dataset = artifacts.read_current(data_dir / "tokenized_dataset", deep=False)
    assert report.inputs == {
        "pretrained_checkpoint": evaluated.version,
        "tokenized_dataset": dataset.version,
    }
    assert report.meta["spec"]["eval"]["micro_batch"] == 4
    scores = json.loads((report.path / "scores.json").read_text())
    assert math.isfinite(scores["perplexity"])
    assert scores["perplexity"] == pytest.approx(math.exp(scores["heldout_loss"]))
    assert scores["heldout_tokens"] == 2 * 4 * 31  # 2 full batches of 4 rows of 32 tokens
    assert (scores["n/arithmetic"], scores["n/qa"], scores["quarantined/qa"]) == (12, 1, 1)
    samples = [json.loads(line) for line in (report.path / "samples.jsonl").open()]
    assert len(samples) == 13
    judged = [s["correct"] for s in samples if s["task"] == "arithmetic"]
    assert scores["accuracy/arithmetic"] == pytest.approx(sum(judged) / 12)
    keys = {"task", "prompt", "messages", "answer", "completion", "correct", "reason"}
    assert set(samples[0]) == keys
    quarantine = [json.loads(line) for line in (report.path / "quarantine.jsonl").open()]
    assert quarantine[0]["line"] == 2 and quarantine[0]["reason"] == "missing_answer"

    rows = Catalog.open(tmp_path / "catalog.duckdb").query(
        "SELECT metric, value FROM eval_scores WHERE checkpoint = ? AND eval_version = ?",
        [evaluated.version, report.version],
    )
    metrics = dict(zip(rows["metric"], rows["value"], strict=True))
    assert metrics["perplexity"] == pytest.approx(scores["perplexity"])
    assert metrics["n/arithmetic"] == 12
    assert f"result (version {report.version})" in run.stderr
