"""``flywheel init DIR``: a working flywheel project to start from, sized for a CPU.

    flywheel init my-flywheel && cd my-flywheel && flywheel check && flywheel run
    flywheel init --agent my-agent        (an agent that learns from the episodes it plays)

Writes, into ``DIR`` (created if missing; existing files are never overwritten unless
``--force``):

- ``flywheel.yaml``: a commented spec (sources, model, SFT, eval, generation, acceptance,
  cycles) that ``flywheel check`` passes as written;
- ``verifiers.py``: the example verifier the spec names (``verifiers:same_number``);
- ``data/sft.jsonl``, ``data/eval.jsonl``, ``data/prompts.jsonl``: an example task in the
  record formats each stage reads (seed conversations; held-out problems with answers;
  prompts, none of them an eval problem), to be replaced by the user's own;
- ``workspace.yaml`` and ``dagster.yaml``: the Dagster workspace (the installed
  ``definitions`` module) and instance config that ``flywheel run`` and ``flywheel ui`` use;
- ``.gitignore``: the ``.flywheel/`` directory where data, checkpoints and the Dagster home go.

With ``--agent``, the task is an environment instead of data files: ``calculator.py`` (an
environment with a calculator tool, its training and held-out episodes, and the scripted
teacher of the seed data) and a spec with ``environments``, ``agent`` and a seed SFT played by
that teacher, gated on held-out success.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flywheel.data.arithmetic import arithmetic_examples
from flywheel.project.runner import INSTANCE, WORKSPACE, template

SPEC = "flywheel.yaml"
# The example task: seed SFT on sums and differences of operands up to 20; held-out eval and
# the cycles' prompts have an operand from 21 to 40, which no seed example has: the seed model
# gets some right, and the answers the verifier accepts teach it the rest.
SEED_EXAMPLES, SEED_MAX = 2000, 20
EVAL_EXAMPLES, PROMPT_POOL, HARDER_MAX = 200, 12000, 40
SYSTEM = "Answer with the number only."


class ScaffoldError(ValueError):
    """``flywheel init`` would overwrite a file; the message names them."""


def example_data() -> dict[str, list[dict[str, Any]]]:
    """The example task's three files, as records: seed conversations, held-out problems,
    and prompts that are none of the held-out problems (those are never trained on)."""
    seed = _distinct(arithmetic_examples(SEED_EXAMPLES, SEED_MAX, seed=0))
    harder = _distinct(arithmetic_examples(PROMPT_POOL, HARDER_MAX, seed=1))
    harder = [e for e in harder if max(map(int, re.findall(r"\d+", e["prompt"]))) > SEED_MAX]
    held_out, prompts = harder[:EVAL_EXAMPLES], harder[EVAL_EXAMPLES:]
    return {
        "data/sft.jsonl": [{"messages": [*_asked(e), _said(e["answer"])]} for e in seed],
        "data/eval.jsonl": [{"messages": _asked(e), "answer": e["answer"]} for e in held_out],
        "data/prompts.jsonl": [{"messages": _asked(e), "answer": e["answer"]} for e in prompts],
    }


def _asked(example: dict[str, str]) -> list[dict[str, str]]:
    """The conversation up to the question: the system turn travels with every record, so
    eval and generation prompt the model exactly as SFT trained it."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": example["prompt"]},
    ]


def _said(answer: str) -> dict[str, str]:
    return {"role": "assistant", "content": answer}


def _distinct(examples: list[dict[str, str]]) -> list[dict[str, str]]:
    return list({e["prompt"]: e for e in examples}.values())


def files(agent: bool = False) -> dict[str, str]:
    """Every file ``init`` writes, by path relative to the project, with its content."""
    shared = {
        WORKSPACE: template(WORKSPACE),
        INSTANCE: template(INSTANCE),
        ".gitignore": template("gitignore"),
    }
    if agent:
        return {
            SPEC: template("agent.yaml"),
            "calculator.py": template("calculator.py.tmpl"),
        } | shared
    out = {SPEC: template(SPEC), "verifiers.py": template("verifiers.py.tmpl"), **shared}
    for name, records in example_data().items():
        out[name] = "".join(json.dumps(r) + "\n" for r in records)
    return out


def init_project(directory: Path, force: bool = False, agent: bool = False) -> list[Path]:
    """Write the project into ``directory`` (``agent``: the environment project); the paths
    written. Refuses (``ScaffoldError``, nothing written) to overwrite an existing file unless
    ``force``."""
    planned = {directory / name: text for name, text in files(agent).items()}
    existing = sorted(str(p) for p in planned if p.exists())
    if existing and not force:
        raise ScaffoldError(
            f"flywheel init: {len(existing)} file(s) exist and were left alone: "
            + ", ".join(existing)
            + " (--force overwrites them)"
        )
    for path, text in planned.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(planned)
