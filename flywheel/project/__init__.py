"""A flywheel project on disk: scaffolding it (``flywheel init``) and starting its Dagster
processes from any directory (``flywheel run``, ``flywheel ui``).

May import: every plane (core, data, train, loop) and the preflight; never dagster. The
commands start Dagster's own programs (``python -m jobs.run``, ``dagster dev``) in a
subprocess with the environment this package computes.
"""
