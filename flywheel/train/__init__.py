"""The training plane: tokenizer, packing, streaming loader, the training loop, checkpoints.

Entry points run out of process, under ``accelerate launch``, and report through Pipes:

    flywheel train pretrain --spec flywheel.yaml
    flywheel train sft --spec flywheel.yaml

May import: ``flywheel.core`` and ``flywheel.data``; never ``flywheel.loop`` or ``flywheel.cli``.
Importing this package is cheap: torch and transformers are imported by the modules that
need them.
"""
