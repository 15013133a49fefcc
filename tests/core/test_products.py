"""Resolving a stage's inputs: CURRENT, pinned, or as another input recorded them; and the
``--input PRODUCT=VERSION`` pins that out-of-process entries take and record."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.core import artifacts
from flywheel.core import products as P
from flywheel.core.spec import load_spec
from flywheel.train import launch
from flywheel.train.packing import build_tokenized_dataset
from flywheel.train.pretrain import Inputs
from flywheel.train.tokenizer import build_tokenizer
from tests.train.conftest import build_inputs, entry_env


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    """Deduplicated shards, a tokenizer and a tokenized dataset (tests/train's tiny spec)."""
    return build_inputs(tmp_path / "run")


def _repack(path: Path, *overrides: str) -> None:
    """A new tokenized_dataset version, packed under ``overrides``."""
    spec = load_spec(path, list(overrides))
    build_tokenized_dataset(spec, P.resolve_inputs(spec, P.TOKENIZED))


def test_resolves_current_and_the_tokenizer_the_dataset_was_packed_with(packed: Path) -> None:
    spec = load_spec(packed)
    first = P.resolve_inputs(spec, P.PRETRAINED)
    assert list(first) == [P.TOKENIZED, P.TOKENIZER]
    dataset, tokenizer = first[P.TOKENIZED], first[P.TOKENIZER]
    assert dataset.version == artifacts.current_version(spec.product_dir(P.TOKENIZED))
    dedup = dataset.manifest["input_version"]
    assert dataset.inputs == {P.DEDUPLICATED: dedup, P.TOKENIZER: tokenizer.version}
    assert tokenizer.inputs == {P.DEDUPLICATED: dedup}

    # A newer tokenizer is current, the dataset is not repacked: pre-training still reads
    # the tokenizer whose ids are in the rows; handed the current one, it refuses.
    bigger = load_spec(packed, ["tokenizer.vocab_size=420"])
    newer = build_tokenizer(bigger, P.resolve_inputs(bigger, P.TOKENIZER))
    assert artifacts.current_version(spec.product_dir(P.TOKENIZER)) == newer.version
    again = P.resolve_inputs(spec, P.PRETRAINED)
    assert again[P.TOKENIZER].version == tokenizer.version != newer.version
    mixed = P.resolve_inputs(spec, P.PRETRAINED, {P.TOKENIZER: newer.version})
    with pytest.raises(P.InputError, match=f"was packed with tokenizer {tokenizer.version}"):
        Inputs.handed(spec, mixed)

    shutil.rmtree(tokenizer.path)  # the recorded version is gone: say what to rebuild
    with pytest.raises(artifacts.ArtifactError, match="re-materialize tokenized_dataset"):
        P.resolve_inputs(spec, P.PRETRAINED)


def test_pins_choose_versions_and_are_checked(packed: Path) -> None:
    spec = load_spec(packed)
    old = P.resolve_inputs(spec, P.PRETRAINED)
    _repack(packed, "packing.seq_len=32")
    current = P.resolve_inputs(spec, P.PRETRAINED)
    assert current[P.TOKENIZED].version != old[P.TOKENIZED].version
    pinned = P.resolve_inputs(spec, P.PRETRAINED, {P.TOKENIZED: old[P.TOKENIZED].version})
    assert P.versions(pinned) == P.versions(old)

    with pytest.raises(P.InputError, match="pretrained_checkpoint does not read tokenizr"):
        P.resolve_inputs(spec, P.PRETRAINED, {"tokenizr": "v-1"})
    with pytest.raises(artifacts.ArtifactError, match="v-nope does not exist"):
        P.resolve_inputs(spec, P.PRETRAINED, {P.TOKENIZED: "v-nope"})
    with pytest.raises(ValueError, match="training_set is per cycle"):
        P.resolve_inputs(spec, P.TRAINING_SET)


def test_entries_take_pins_on_the_command_line(packed: Path) -> None:
    spec = load_spec(packed)
    versions = P.versions(P.resolve_inputs(spec, P.PRETRAINED))
    argv = launch.pinned_inputs("pretrain", spec)
    assert argv == [
        "--input",
        f"tokenized_dataset={versions[P.TOKENIZED]}",
        "--input",
        f"tokenizer={versions[P.TOKENIZER]}",
    ]
    assert P.parse_pins(argv[1::2]) == versions
    assert launch.pinned_inputs("generate", spec) == []  # a cycle's: its caller pins them
    with pytest.raises(P.InputError, match="expected PRODUCT=VERSION"):
        P.parse_pins(["tokenized_dataset"])
    command = launch.command("pretrain", spec, packed, argv)
    assert command[-4:] == argv


@pytest.mark.integration
def test_pretraining_reads_and_records_the_pinned_dataset(packed: Path) -> None:
    spec = load_spec(packed)
    old = P.versions(P.resolve_inputs(spec, P.PRETRAINED))
    _repack(packed, "packing.seq_len=32")  # CURRENT moves on while the run waits
    argv = [sys.executable, "-m", "flywheel.train.pretrain", "--spec", str(packed)]
    argv += ["--set", "pretrain.steps=4", "--set", "pretrain.save_every=2"]
    argv += ["--input", f"tokenized_dataset={old[P.TOKENIZED]}"]
    proc = subprocess.run(argv, env=entry_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = artifacts.read_current(spec.product_dir(P.PRETRAINED))
    assert published.inputs == old  # the pinned dataset, and its own tokenizer
    assert published.meta["lineage"][P.TOKENIZED] == old[P.TOKENIZED]
