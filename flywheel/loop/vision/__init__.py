"""The vision loop: the flywheel's stages when the spec has a ``vision`` section.

    FLYWHEEL_SPEC=examples/vision/flywheel.yaml make demo

``data`` (task ends, held-out images, image conversations, the seed data from the curated
image shards), ``seed`` (the seed VLM SFT: ``sft_checkpoint``), ``evaluate`` (held-out
accuracy at the easy and the hard end), ``generate`` (the champion answers new images),
``accept`` (the numeric verifier, held-out guard, dedup) and ``retrain`` (VLM SFT on the
cycle's training set). The graph, the sensor, the gate and the report are the text loop's.
May import flywheel.core, flywheel.data, flywheel.train and the rest of flywheel.loop.
"""
