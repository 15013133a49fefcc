"""The spec's sections as pydantic models, one module per plane (no torch, so checks are fast).

``sources``, ``filters`` and ``dedup`` configure the data plane, ``engine`` where it runs,
``train`` the training plane, ``loop`` generation, acceptance and cycles, ``verifier`` the one
verifier setting that eval tasks and acceptance share; ``flywheel.core.spec`` composes them
into ``Spec``.

May import: nothing of flywheel but other modules of this package.
"""
