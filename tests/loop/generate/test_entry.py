"""``python -m flywheel.loop.generate`` in-process on a tiny spec and a tiny trained checkpoint."""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.catalog import Catalog, Decision
from flywheel.core.report import Reporter
from flywheel.core.shards import read_current
from flywheel.core.spec import load_spec
from flywheel.data.arithmetic import arithmetic_examples
from flywheel.loop.cycles import generations_root
from flywheel.loop.generate.__main__ import main
from flywheel.loop.generate.generations import SCHEMA, generate_cycle
from flywheel.train.tokenizer import load_tokenizer
from tests.loop.generate.openai_server import CompletionsServer

EVAL_PROMPT = "What is 2 + 2?"


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    prompts = [
        {"prompt": e["prompt"], "answer": e["answer"]} for e in arithmetic_examples(5, 20, 31)
    ]
    prompts += [
        {"prompt": EVAL_PROMPT, "answer": "4"},  # an eval prompt: must never be generated from
        {"prompt": prompts[0]["prompt"]},  # a duplicate
        {"id": "open-1", "prompt": "What is 10 + 10?"},  # no answer
    ]
    lines = [json.dumps(p) for p in prompts] + ["{not json"]
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": EVAL_PROMPT, "answer": "4"}) + "\n")
    path = tmp_path / "flywheel.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: generate-test
            data_dir: data
            catalog: catalog.duckdb
            eval:
              tasks:
                - {name: qa, kind: jsonl, path: qa.jsonl, verifier: exact}
            generation:
              backend: transformers
              prompts: {kind: jsonl, path: prompts.jsonl, num_prompts: 50}
              samples_per_prompt: 3
              temperature: 1.0
              max_new_tokens: 6
              batch_size: 4
            """
        )
    )
    return path


def argv(spec_path: Path, ckpt: Path, cycle: int = 1, *sets: str) -> list[str]:
    overrides = [a for s in sets for a in ("--set", s)]
    return ["--spec", str(spec_path), "--cycle", str(cycle), "--checkpoint", str(ckpt), *overrides]


def test_generations_shard_set(spec_path: Path, chat_checkpoint: Path) -> None:
    assert main(argv(spec_path, chat_checkpoint, 2)) == 0
    shards = read_current(generations_root(load_spec(spec_path), 2))
    df = shards.read()
    assert dict(df.schema) == SCHEMA
    version = artifacts.verify(chat_checkpoint).version
    assert df.height == 6 * 3  # 5 problems + the open prompt, 3 samples each
    assert df["sample_index"].to_list() == [0, 1, 2] * 6
    assert df["greedy"].to_list() == [True, False, False] * 6
    assert EVAL_PROMPT not in df["prompt"].to_list()
    assert set(df["cycle"]) == {2} and set(df["checkpoint"]) == {version}
    assert set(df["backend"]) == {"transformers"} and set(df["seed"]) == {2}  # seed 0 + cycle
    assert set(df["finish_reason"]) <= {"stop", "length"}
    open_rows = df.filter(pl.col("prompt_id") == "open-1")
    assert open_rows.height == 3 and open_rows["answer"].is_null().all()
    row = df.row(4, named=True)
    key = f"2|{row['prompt_id']}|{row['sample_index']}|{version}"
    assert row["generation_id"] == hashlib.sha1(key.encode()).hexdigest()[:16]
    assert df["generation_id"].n_unique() == df.height

    reasons = shards.aux("quarantine").sort("line")[["line", "reason"]].rows()
    assert reasons == [(6, "eval_prompt"), (7, "duplicate_prompt"), (9, "invalid_json")]
    m = shards.manifest
    assert (m["cycle"], m["checkpoint"], m["backend"]) == (2, version, "transformers")
    assert m["checkpoint_path"] == str(chat_checkpoint)
    assert shards.inputs == {P.PROMOTED: version}  # by hand, --checkpoint is the champion read
    assert m["sampling"]["n"] == 3 and m["prompt_source"]["kind"] == "jsonl"
    assert m["counts"]["prompts"] == 6 and m["counts"]["quarantined"] == 3
    assert m["completions"] == 18 and m["new_tokens"] >= 18 and m["completions_per_s"] > 0


def test_rerun_reuses_the_set(spec_path: Path, chat_checkpoint: Path) -> None:
    spec = load_spec(spec_path)
    handed = {P.PROMOTED: artifacts.verify(chat_checkpoint)}
    with Reporter() as reporter:
        first = generate_cycle(spec, 1, handed, reporter)
        # Bookkeeping settings do not change what is generated.
        faster = load_spec(spec_path, ["generation.endpoint.concurrency=16"])
        again = generate_cycle(faster, 1, handed, reporter)
        changed = load_spec(spec_path, ["generation.temperature=0.5"])
        other = generate_cycle(changed, 1, handed, reporter)
    assert not first["reused"] and again["reused"]
    assert again["version"] == first["version"] and other["version"] != first["version"]
    meta = first["metadata"]
    assert (meta["rows"], meta["prompts"], meta["samples_per_prompt"]) == (18, 6, 3)
    assert meta["quarantined"] == 3 and meta["quarantined/eval_prompt"] == 1
    assert meta["samples"]["type"] == "md"
    assert meta["samples"]["raw_value"].startswith("| prompt | sample_index | greedy |")


def test_generation_through_an_endpoint(spec_path: Path, chat_checkpoint: Path) -> None:
    with CompletionsServer(chat_checkpoint) as server:
        sets = ["generation.backend=openai", f"generation.endpoint.url={server.url}"]
        assert main(argv(spec_path, chat_checkpoint, 1, *sets)) == 0
    df = read_current(generations_root(load_spec(spec_path), 1)).read()
    assert df.height == 18 and set(df["backend"]) == {"openai"}
    assert len(server.requests) == 6 * 2  # a greedy and a sampled request per prompt


def test_unverifiable_checkpoint_is_refused(spec_path: Path, tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(artifacts.ArtifactError, match="incomplete"):
        main(argv(spec_path, tmp_path / "half"))
    assert not (tmp_path / "data" / "cycles" / "1" / "generations" / "CURRENT").exists()


def test_generation_reads_the_champion_its_cycle_left_and_records_it(
    spec_path: Path, chat_checkpoint: Path
) -> None:
    spec = load_spec(spec_path)
    with pytest.raises(P.InputError, match="synthetic_generations reads .*missing promoted_mod"):
        generate_cycle(spec, 1, {})
    with pytest.raises(FileNotFoundError, match="no model was promoted up to cycle 1"):
        main(["--spec", str(spec_path), "--cycle", "1"])
    champ = artifacts.verify(chat_checkpoint)
    at = datetime.now(UTC)
    first = Decision(0, champ.version, str(champ.path), "acc", 0.5, None, None, True, "first", at)
    Catalog.open(spec.catalog).record_decision(first)
    pin = ["--input", f"{P.PROMOTED}={champ.version}"]  # what the asset hands it
    assert main(["--spec", str(spec_path), "--cycle", "1", *pin]) == 0
    shards = read_current(generations_root(spec, 1))
    assert shards.inputs == {P.PROMOTED: champ.version}
    assert set(shards.read()["checkpoint"]) == {champ.version}
    with pytest.raises(FileNotFoundError, match="no cycle decided on candidate v-nope"):
        main(["--spec", str(spec_path), "--cycle", "1", "--input", f"{P.PROMOTED}=v-nope"])


def test_generation_continues_whole_conversations(tmp_path: Path, chat_checkpoint: Path) -> None:
    """Prompts in messages form keep their earlier turns, ``generation.system_prompt`` comes
    first where a conversation has none, the server receives the rendered conversation, and
    every generation carries it (ids hash the whole conversation)."""
    from flywheel.core import chat

    earlier = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "What is 3 + 4?"},
    ]
    own = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 5 + 5?"},
    ]
    lines = [{"messages": earlier, "answer": "7"}, {"messages": own}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "flywheel.yaml").write_text(
        textwrap.dedent(
            """
            data_dir: data
            catalog: catalog.duckdb
            eval: {tasks: [{name: a, kind: arithmetic, num_examples: 2}]}
            generation:
              prompts: {kind: jsonl, path: prompts.jsonl}
              system_prompt: Answer with digits only.
              samples_per_prompt: 1
              max_new_tokens: 4
            """
        )
    )
    with CompletionsServer(chat_checkpoint) as server:
        sets = ["generation.backend=openai", f"generation.endpoint.url={server.url}"]
        assert main(argv(tmp_path / "flywheel.yaml", chat_checkpoint, 1, *sets)) == 0
    system = {"role": "system", "content": "Answer with digits only."}
    df = read_current(generations_root(load_spec(tmp_path / "flywheel.yaml"), 1)).read()
    conversations = [chat.loads(m) for m in df["messages"]]
    assert conversations == [[system, *earlier], own]  # its own system turn wins
    assert df["prompt"].to_list() == ["What is 3 + 4?", "What is 5 + 5?"]
    assert df["prompt_id"].to_list() == [chat.conversation_id(c) for c in conversations]
    assert df["answer"].to_list() == ["7", None]
    sent = sorted(r["prompt"] for r in server.requests)
    tok = load_tokenizer(chat_checkpoint)
    assert sent == sorted(chat.render_prompts(tok, conversations))
    assert sent[0].startswith("<|im_start|>system\n")
    assert "<|im_start|>assistant\n2<|im_end|>" in "".join(sent)  # the earlier turn was sent
