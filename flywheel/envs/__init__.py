"""Agent environments: tool-using episodes with a reward, for offline collection and online RL.

    python -m pytest -q tests/envs

One protocol (``protocol``), the one TRL 1.16's ``GRPOTrainer(environment_factory=...)``
uses, so the same class serves a collection loop and online GRPO: ``reset(**episode)``
returns the observation appended to the prompt, the public methods are the tools the model
calls, ``get_reward()`` scores the finished episode, ``done``/``truncated`` say it ended.
``load`` turns the spec's ``environments`` entries (import path + settings) into zero-argument
factories. Two environments ship: ``guess.NumberGuess`` (bisection with a turn budget) and
``python_tool.PythonTool`` (arithmetic by running real Python in a limited subprocess).

May import: ``flywheel.core`` and ``flywheel.loop.plugins`` (the spec-directory import helper);
it sits at the loop's rank, so ``flywheel.train`` and ``flywheel.data`` never import it.
"""
