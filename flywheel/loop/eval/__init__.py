"""Evaluation of a published checkpoint: held-out perplexity and verified task accuracy.

    python -m flywheel.loop.eval --spec flywheel.yaml [--stage sft|pretrain]
    flywheel train eval --spec flywheel.yaml

``perplexity`` scores the held-out split of the tokenized dataset; ``tasks`` generates greedy
answers to problems with known answers and checks them with ``flywheel.loop.verifiers``;
``scores.evaluate`` scores the stage's current checkpoint (or a cycle's candidate) with both and
publishes a report under ``<data_dir>/eval_scores``; ``__main__`` is its command line.
Importing this package is cheap: torch is imported by the modules that use it.
"""
