"""Held-out accuracy of a VLM at the easy and the hard end of the counting task.

    python -c "from flywheel.core.spec import load_spec; from flywheel.loop.vision.evaluate \
import vision_metrics; print(vision_metrics(load_spec('examples/vision/flywheel.yaml'), 'ckpt'))"

What ``flywheel.loop.eval`` scores with a ``vision`` section: ``vision/<end>/accuracy`` (greedy
answers to ``vision.eval_examples`` held-out images of each end, judged by the numeric
verifier); ``vision/hard/accuracy`` is the metric the example's gate promotes on.
"""

from __future__ import annotations

from pathlib import Path

from flywheel.core.spec import Spec
from flywheel.loop.vision.data import ENDS, task, vision_settings
from flywheel.loop.visual_task import accuracy


def vision_metrics(spec: Spec, checkpoint: Path) -> dict[str, float]:
    from flywheel.loop.vision.seed import use_threads
    from flywheel.train.vlm.model import load_vlm

    settings = vision_settings(spec)
    use_threads(settings)
    model, processor = load_vlm(Path(checkpoint), spec.model.attn_implementation)
    return {
        f"vision/{end}/accuracy": accuracy(model, processor, task(settings, end).eval_problems())
        for end in ENDS
    }
