"""The loop: evaluation, generation, verification, acceptance, cycles, promotion, report.

Owns everything that turns a checkpoint into the next cycle's data and decides which model is
the champion: eval tasks and verifiers, prompt sources, generation backends, acceptance,
per-cycle training sets, retraining (SFT plus DPO/GRPO/RLOO), the promotion gate and the
per-cycle report, why the loop is stuck (status) and lineage by the user's own keys.

May import: ``flywheel.core``, ``flywheel.data`` and ``flywheel.train``; never ``flywheel.cli``.
"""
