"""The training plane: models, resumable training, SFT, checkpoints and Pipes reporting.

Entry points run out of process, under ``accelerate launch``:

    flywheel train pretrain --spec flywheel.yaml
    flywheel train sft --spec flywheel.yaml

Importing this package is cheap: torch and transformers are imported by the modules that
need them.
"""
