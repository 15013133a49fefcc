from pathlib import Path

import pytest
from pydantic import BaseModel

from flywheel.core.explain import explain
from flywheel.core.settings.train import SftSettings
from flywheel.core.settings.verifier import VerifierSettings
from flywheel.core.spec import Spec, SpecError, load_spec
from tests.conftest import write_spec


def test_defaults_are_valid_and_complete(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, "{}"))
    assert spec.sources[0].kind == "python_env"
    assert spec.dedup.threshold == 0.8
    assert spec.data_dir == (tmp_path / ".flywheel/data").resolve()  # relative to the spec file
    assert spec.base_dir == tmp_path


def _fields(model: type[BaseModel]):
    for name, field in model.model_fields.items():
        yield name, field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann)


def test_every_field_has_a_default_and_a_description() -> None:
    fields = list(_fields(Spec))
    assert len(fields) > 30
    missing = [n for n, f in fields if not (f.description or "").strip()]
    assert missing == []
    required = [n for n, f in fields if f.is_required()]
    assert required == []
    # one line per field of a section; list items add theirs (tests/core/test_spec_fields.py)
    assert len([line for line in explain(Spec) if "[" not in line.split()[0]]) == len(fields)


def test_unknown_key_names_file_path_and_suggestion(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "dedup:\n  treshold: 0.9\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "dedup.treshold: unknown key (did you mean 'threshold'?)" in msg


def test_bad_value_names_key_path_and_expectation(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "dedup:\n  threshold: 1.5\n")
    with pytest.raises(SpecError, match=r"dedup\.threshold: .*1.*\(got 1\.5\)"):
        load_spec(path)


def test_error_inside_a_source_list(tmp_path: Path) -> None:
    body = "sources:\n  - name: a\n    kind: jsonl\n    path: x.jsonl\n    text_feild: body\n"
    with pytest.raises(SpecError, match=r"sources\[0\]\.text_feild: unknown key"):
        load_spec(write_spec(tmp_path, body))


# One entry of each kind of a tagged union (text and image sources), with a misspelt key and
# a bad value: pydantic puts the kind in the error's location, the user never wrote it there.
TAGGED = {
    "jsonl": ("sources", "{name: a, kind: jsonl, path: a.jsonl, text_feild: t, id_field: 3}"),
    "parquet": ("sources", "{name: a, kind: parquet, path: '', id_feild: i}"),
    "text_files": ("sources", "{name: a, kind: text_files, path: d, glb: '*', glob: ''}"),
    "python_env": ("sources", "{name: a, kind: python_env, max_doc: 1, max_docs: 0}"),
    "image_parquet": (
        "images.sources",
        "{name: a, kind: image_parquet, path: a.pq, image_feild: i, image_field: ''}",
    ),
    "webdataset": (
        "images.sources",
        "{name: a, kind: webdataset, path: a.tar, text_extension: [t], image_extensions: []}",
    ),
    "visual_counting": ("images.sources", "{name: a, kind: visual_counting, cont: 1, count: 0}"),
}
MISSPELT = {
    "jsonl": ("text_feild", "text_field", "id_field"),
    "parquet": ("id_feild", "id_field", "path"),
    "text_files": ("glb", "glob", "glob"),
    "python_env": ("max_doc", "max_docs", "max_docs"),
    "image_parquet": ("image_feild", "image_field", "image_field"),
    "webdataset": ("text_extension", "text_extensions", "image_extensions"),
    "visual_counting": ("cont", "count", "count"),
}


def test_every_tagged_union_kind_is_covered() -> None:
    from flywheel.core.spec_input import union_tags

    assert set(union_tags(Spec)) == set(TAGGED) == set(MISSPELT)


@pytest.mark.parametrize("kind", sorted(TAGGED))
def test_an_error_inside_any_kind_of_source_names_the_key_as_written(
    tmp_path: Path, kind: str
) -> None:
    section, entry = TAGGED[kind]
    body = f"sources: [{entry}]\n" if section == "sources" else f"images: {{sources: [{entry}]}}\n"
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, body))
    msg = str(err.value)
    wrong, right, bad = MISSPELT[kind]
    assert f"  {section}[0].{wrong}: unknown key (did you mean {right!r}?)" in msg, msg
    assert f"  {section}[0].{bad}: " in msg, msg
    assert f"[0].{kind}" not in msg, msg


def test_sft_data_kinds_are_one_model_with_no_tag_in_the_path(tmp_path: Path) -> None:
    # sft.data's kinds (jsonl, python, ...) share one model: no union tag to drop there
    body = "sft: {data: {kind: python, functon: m:f, num_examples: 0}}\n"
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, body))
    assert "  sft.data.functon: unknown key (did you mean 'function'?)" in str(err.value)
    assert "  sft.data.num_examples: " in str(err.value)


def test_unknown_source_kind(tmp_path: Path) -> None:
    body = "sources:\n  - name: a\n    kind: csv\n"
    with pytest.raises(SpecError, match=r"sources\[0\].*csv"):
        load_spec(write_spec(tmp_path, body))


def test_duplicate_source_names(tmp_path: Path) -> None:
    body = "sources:\n  - {name: a, kind: python_env}\n  - {name: a, kind: python_env}\n"
    with pytest.raises(SpecError, match="source names must be unique; repeated: a"):
        load_spec(write_spec(tmp_path, body))


def test_yaml_syntax_error_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write_spec(tmp_path, "dedup: [unclosed\n"))


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(write_spec(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_typed_overrides(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "sources:\n  - {name: a, kind: python_env}\n")
    spec = load_spec(path, ["dedup.threshold=0.9", "dedup.num_perm=64", "sources.0.name=b"])
    assert (spec.dedup.threshold, spec.dedup.num_perm) == (0.9, 64)
    assert spec.sources[0].name == "b"
    with pytest.raises(SpecError, match="dedup.threshold"):
        load_spec(path, ["dedup.threshold=high"])
    with pytest.raises(SpecError, match="must look like key.path=value"):
        load_spec(path, ["dedup.threshold"])


def test_env_selects_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_spec(tmp_path, "name: from-env\n")
    monkeypatch.setenv("FLYWHEEL_SPEC", str(path))
    assert load_spec().name == "from-env"


def test_fingerprint_tracks_content(tmp_path: Path) -> None:
    a = load_spec(write_spec(tmp_path, "name: x\n"))
    b = load_spec(write_spec(tmp_path, "name: x\ndedup: {threshold: 0.7}\n"))
    assert a.fingerprint() != b.fingerprint()
    assert a.resolved()["dedup"]["threshold"] == 0.8


def test_training_sections_validate_with_key_paths(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        pretrain: {precision: fp8, lr: -1}
        sft: {data: {kind: jsonl}}
        model: {confg: {}}
        """,
    )
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "pretrain.precision: Input should be 'auto', 'bf16', 'fp16' or 'fp32'" in msg
    assert "pretrain.lr: Input should be greater than 0" in msg
    assert "sft.data: sft.data.path is required for kind 'jsonl'" in msg
    assert "model.confg: unknown key (did you mean 'config'?)" in msg


def test_training_paths_resolve_against_the_spec(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        tokenizer: {path: tok}
        sft: {data: {kind: jsonl, path: sft.jsonl}, accelerate_config: acc.yaml}
        eval: {tasks: [{name: qa, kind: jsonl, path: qa.jsonl, verifier: exact}]}
        """,
    )
    spec = load_spec(path, ["pretrain.steps=7", "model.config.hidden_size=64"])
    assert spec.tokenizer.path == tmp_path / "tok"
    assert spec.sft.data.path == tmp_path / "sft.jsonl"
    assert spec.sft.accelerate_config == tmp_path / "acc.yaml"
    assert spec.eval.tasks[0].path == tmp_path / "qa.jsonl"
    assert spec.pretrain.steps == 7 and spec.model.config["hidden_size"] == 64
    assert spec.model.config["model_type"] == "llama"  # merged over the default Llama
    assert spec.model.config["num_hidden_layers"] == 4


def test_cycle_training_is_sft_with_a_few_overrides(tmp_path: Path) -> None:
    body = "sft: {lr: 0.002, micro_batch: 64, accelerate_config: acc.yaml}\n"
    spec = load_spec(write_spec(tmp_path, body + "cycles: {train: {lr: 0.001}}\n"))
    train = spec.cycles.train_settings(spec.sft)
    assert (train.steps, train.warmup_steps) == (300, 0)  # the cycles' own defaults
    assert (train.lr, train.micro_batch) == (0.001, 64)  # overridden; inherited
    assert train.accelerate_config == tmp_path / "acc.yaml"  # sft's, resolved
    preference = spec.cycles.preference_settings(spec.sft)
    assert (preference.steps, preference.lr, preference.micro_batch) == (50, 5e-5, 64)
    assert preference.accelerate_config == train.accelerate_config  # the launch's
    default = load_spec(write_spec(tmp_path, "{}"))
    assert default.cycles.train_settings(default.sft) == SftSettings(steps=300, warmup_steps=0)
    with pytest.raises(SpecError, match=r"cycles\.train\.max_length: unknown key"):
        load_spec(write_spec(tmp_path, "cycles: {train: {max_length: 64}}\n"))


def test_one_verifier_setting_for_eval_tasks_and_acceptance(tmp_path: Path) -> None:
    """A plain kind (the old eval spelling) or acceptance's mapping, in both places; any kind
    string parses, since a plugin may register it after the spec is read."""
    body = """
    eval:
      tasks:
        - {name: a, verifier: exact}
        - {name: b, verifier: {kind: python, function: "checks:same"}}
        - {name: c, verifier: regex, pattern: "= {answer}"}
        - {name: d, verifier: {kind: last_word, reward_model: rm}}
        - {name: e}
    acceptance: {verifier: numeric}
    plugins: [checks, pkg.more_checks]
    """
    spec = load_spec(write_spec(tmp_path, body))
    verifiers = [t.verifier for t in spec.eval.tasks]
    assert [v.kind for v in verifiers] == ["exact", "python", "regex", "last_word", "numeric"]
    assert verifiers[1].function == "checks:same"
    assert verifiers[2].pattern == "= {answer}"  # the task-level key is an alias
    assert verifiers[3].reward_model == tmp_path / "rm"  # resolved like acceptance's
    assert spec.acceptance.verifier == VerifierSettings(kind="numeric")
    assert spec.plugins == ["checks", "pkg.more_checks"]
    assert spec.resolved()["eval"]["tasks"][0]["verifier"]["kind"] == "exact"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "eval: {tasks: [{name: a, verifier: self_consistency}]}",
            "eval.tasks[0].verifier: self_consistency votes across several samples",
        ),
        (
            "eval: {tasks: [{name: a, verifier: {kind: regex, pattern: x}, pattern: y}]}",
            "pattern and verifier.pattern differ",
        ),
        ("eval: {tasks: [{name: a, verifier: python}]}", "verifier.function"),
        ("acceptance: {verifier: {kind: ''}}", "acceptance.verifier.kind: String should have"),
        ("plugins: [my-checks]", "plugins are dotted module names"),
    ],
)
def test_verifier_settings_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, body + "\n"))
    assert message in str(err.value)


AGENT = """
environments: [{name: guess, class_path: "flywheel.envs.guess:NumberGuess"}]
agent: {environment: guess}
"""


def test_an_agent_spec_trains_by_cycles_method_not_by_preference(tmp_path: Path) -> None:
    ppo = load_spec(write_spec(tmp_path, AGENT + "cycles: {method: sft+ppo}\n"))
    assert ppo.cycles.method == "sft+ppo" and ppo.cycles.ppo.iterations >= 1
    with pytest.raises(SpecError, match="cycles.preference: 'dpo' trains on generations"):
        load_spec(write_spec(tmp_path, AGENT + "cycles: {preference: dpo}\n"))
    with pytest.raises(SpecError, match="cycles.method: 'ppo' trains in the agent's environment"):
        load_spec(write_spec(tmp_path, "cycles: {method: ppo}\n"))


def test_engine_is_local_unless_the_spec_says_ray(tmp_path: Path) -> None:
    assert load_spec(write_spec(tmp_path, "")).engine == "local"
    spec = load_spec(write_spec(tmp_path, "engine: ray\nray: {address: auto, partitions: 8}\n"))
    assert (spec.engine, spec.ray.address, spec.ray.partitions) == ("ray", "auto", 8)
    for address in ("ray://head:10001", "10.0.0.5:6379"):
        assert load_spec(write_spec(tmp_path, f"ray: {{address: '{address}'}}\n")).ray.address


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("engine: spark\n", "engine: Input should be 'local' or 'ray'"),
        ("ray: {address: 'http://head'}\n", 'ray.address must be "auto", "ray://host:port"'),
        ("ray: {address: auto, num_cpus: 4}\n", "ray.num_cpus sizes a cluster started here"),
        ("ray: {partitions: 0}\n", "ray.partitions"),
    ],
)
def test_engine_settings_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_spec(write_spec(tmp_path, body))
