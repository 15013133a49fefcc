"""The spec's ``environments``: import paths and settings checked at ``flywheel check``.

.venv/bin/python -m pytest -q tests/envs/test_load.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.core.spec import SpecError, load_spec
from flywheel.envs.guess import NumberGuess
from flywheel.envs.load import EnvironmentLoadError, load_environments
from flywheel.envs.python_tool import PythonTool
from flywheel.preflight import errors, preflight
from flywheel.preflight.environments import check_environments
from tests.conftest import write_spec

GOOD = """
name: agents
environments:
  - {name: guess, class_path: "flywheel.envs.guess:NumberGuess", settings: {max_n: 64}}
  - {name: calc, class_path: "flywheel.envs.python_tool:PythonTool"}
  - {name: local, class_path: "my_envs:Coin"}
"""

# A user environment next to the spec: imported with the spec's directory on sys.path.
MY_ENVS = '''
class Coin:
    """Say heads."""

    done = truncated = False

    def reset(self, **row):
        self.said = None
        return "Say heads or tails."

    def say(self, word: str) -> str:
        """Say a word.

        Args:
            word: heads or tails.
        """
        self.said, self.done = word, True
        return "ok"

    def get_reward(self) -> float:
        return float(self.said == "heads")
'''


def test_a_good_spec_loads_factories_by_name(tmp_path: Path) -> None:
    (tmp_path / "my_envs.py").write_text(MY_ENVS)
    spec = load_spec(write_spec(tmp_path, GOOD))
    assert check_environments(spec) == []
    factories = load_environments(spec)
    assert list(factories) == ["guess", "calc", "local"]
    guess = factories["guess"]()
    assert isinstance(guess, NumberGuess) and guess.settings.max_n == 64
    assert isinstance(factories["calc"](), PythonTool)
    coin = factories["local"]()
    coin.reset(prompt="p")
    coin.say("heads")
    assert coin.get_reward() == 1.0


BAD = """
name: agents
environments:
  - {name: gone, class_path: "no_such_module_xyz:Env"}
  - {name: wrong, class_path: "flywheel.envs.guess:NumberGuess", settings: {max_n: 0}}
  - {name: typo, class_path: "flywheel.envs.guess:NumberGues"}
  - {name: extra, class_path: "my_bad_envs:Coin", settings: {sides: 3}}
  - {name: nodoc, class_path: "my_bad_envs:NoDoc"}
"""


def test_every_bad_entry_is_one_error_naming_its_key(tmp_path: Path) -> None:
    nodoc = "\n\nclass NoDoc(Coin):\n    def flip(self, times: int) -> str:\n        return 'x'\n"
    (tmp_path / "my_bad_envs.py").write_text(MY_ENVS + nodoc)  # a fresh name: not cached
    spec = load_spec(write_spec(tmp_path, BAD))
    found = errors(preflight(spec))
    by_key = {p.key: p.message for p in found}
    assert sorted(by_key) == [
        "environments[0].class_path",
        "environments[1].settings",
        "environments[2].class_path",
        "environments[3].settings",
        "environments[4].class_path",
    ]
    assert len(found) == 5  # one each
    assert "cannot import 'no_such_module_xyz'" in by_key["environments[0].class_path"]
    assert "max_n" in by_key["environments[1].settings"]
    assert "has no 'NumberGues'" in by_key["environments[2].class_path"]
    assert "no Settings model" in by_key["environments[3].settings"]
    assert "tool 'flip' has no JSON schema" in by_key["environments[4].class_path"]
    with pytest.raises(EnvironmentLoadError, match=r"environments\[0\]\.class_path"):
        load_environments(spec)


def test_a_class_without_the_protocol_is_an_error(tmp_path: Path) -> None:
    body = "name: x\nenvironments: [{name: p, class_path: 'pathlib:Path'}]\n"
    (problem,) = check_environments(load_spec(write_spec(tmp_path, body)))
    assert problem.key == "environments[0].class_path"
    assert "no reset or get_reward" in problem.message
    lazy = "class Lazy:\n    def reset(self, **row): ...\n    def get_reward(self): return 0.0\n"
    (tmp_path / "lazy_env.py").write_text(lazy)
    body = "name: x\nenvironments: [{name: p, class_path: 'lazy_env:Lazy'}]\n"
    (problem,) = check_environments(load_spec(write_spec(tmp_path, body)))
    assert problem.message == "Lazy has no done or truncated attribute"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("environments: [{name: a, class_path: 'flywheel.envs.guess.NumberGuess'}]", "class_path"),
        ("environments: [{name: a}]", "class_path"),
        ("environments: [{name: a, class_path: 'm:C', setings: {}}]", "setings"),
        ("environments: [{name: a, class_path: 'm:C'}, {name: a, class_path: 'm:D'}]", "unique"),
    ],
)
def test_a_malformed_entry_is_a_spec_error(tmp_path: Path, body: str, where: str) -> None:
    with pytest.raises(SpecError, match="environments") as caught:
        load_spec(write_spec(tmp_path, body))
    assert where in str(caught.value)
