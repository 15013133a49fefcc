"""A tiny LLaVA from config: a CLIP or SigLIP tower, a projector and the project's Llama.

    python -m flywheel.train.vlm.model --tokenizer TOKENIZER_DIR --out VLM_DIR \
        [--language-model LM_DIR] [--tower siglip]

``build_vlm`` returns transformers' own ``LlavaForConditionalGeneration`` and ``LlavaProcessor``
(so ``save_vlm`` writes a directory that ``AutoProcessor`` and
``LlavaForConditionalGeneration.from_pretrained`` load, as vLLM's Llava does): the vision
tower's patch features go through a two-layer MLP projector into the language model, in place
of the ``<image>`` placeholder tokens the processor expands each image into.

The language model is the project's: its tokenizer (``flywheel.train.tokenizer``) with one
special ``<image>`` token added, and either a fresh model from ``model.config``
(``flywheel.train.model.model_config``, the tiny Llama by default) or the weights of a local
causal-LM checkpoint (the seed SFT model), whose text behaviour is unchanged: the new token's
embedding row is the only addition. Nothing is downloaded.

The image processor is the PIL one (``CLIPImageProcessorPil`` / ``SiglipImageProcessorPil``):
transformers' default "fast" processors need torchvision, which this project does not install.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from flywheel.core.artifacts import ArtifactError
from flywheel.core.settings.train import ModelSettings
from flywheel.train.model import load_model, model_config

IMAGE_TOKEN = "<image>"

# ChatML as flywheel.train.tokenizer.CHAT_TEMPLATE writes it (a text-only conversation renders
# the same), for contents that are lists of blocks as processors and TRL pass them: an image
# block is the <image> placeholder and a newline (LLaVA-1.5's layout), a text block its text.
# The assistant's text and its <|im_end|> sit inside {% generation %}: TRL's assistant-only
# loss trains exactly what the model writes and stops on.
VLM_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for block in content -%}"
    "{%- if block['type'] in ('image', 'image_url') -%}{{ '<image>\\n' }}"
    "{%- elif block['type'] == 'text' -%}{{ block['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ render(message['content'] or '') }}{{ '<|im_end|>' }}"
    "{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}{{ render(message['content']) }}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class VisionTower:
    """The vision tower's shape. The defaults are tiny on purpose: 32-px images in 8-px
    patches are 16 image tokens, and two 64-wide layers train in seconds on a CPU."""

    kind: Literal["clip", "siglip"] = "clip"
    image_size: int = 32  # pixels of the (square) input; images are resized to it
    patch_size: int = 8  # 8 px: one cell of flywheel.data.visual's grid per patch
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("clip", "siglip"):
            raise ValueError(f"vision tower kind must be 'clip' or 'siglip', got {self.kind!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def image_tokens(self) -> int:
        """Placeholder tokens per image: one per patch (CLIP's CLS feature is dropped)."""
        return (self.image_size // self.patch_size) ** 2

    def config(self) -> Any:
        from transformers import CLIPVisionConfig, SiglipVisionConfig

        shape = {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
        }
        if self.kind == "clip":
            return CLIPVisionConfig(**shape, projection_dim=self.hidden_size)
        return SiglipVisionConfig(**shape)

    def image_processor(self) -> Any:
        # Resize straight to the tower's square (no crop): a rendered task image is already
        # that size, and a photo keeps all of its content, squashed.
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        from transformers.models.siglip.image_processing_pil_siglip import (
            SiglipImageProcessorPil,
        )

        size = {"height": self.image_size, "width": self.image_size}
        if self.kind == "clip":
            return CLIPImageProcessorPil(size=size, crop_size=size, do_center_crop=False)
        return SiglipImageProcessorPil(size=size)

    @property
    def select_strategy(self) -> str:
        # LLaVA-1.5 drops CLIP's CLS feature ("default"); SigLIP has none, so it keeps all.
        return "default" if self.kind == "clip" else "full"


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<image>`` to ``tokenizer`` as a special token (kept, if present); its id.

    Special, so that ``decode(skip_special_tokens=True)`` drops placeholders and no text can
    spell it; the existing special tokens (the chat tokens) stay special."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def build_processor(tokenizer: PreTrainedTokenizerBase, tower: VisionTower) -> LlavaProcessor:
    """The LlavaProcessor of ``tokenizer`` (given ``<image>`` if it lacks it) and ``tower``."""
    add_image_token(tokenizer)
    return LlavaProcessor(
        image_processor=tower.image_processor(),
        tokenizer=tokenizer,
        patch_size=tower.patch_size,
        vision_feature_select_strategy=tower.select_strategy,
        chat_template=VLM_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        # CLIP's CLS token is one more feature, which the "default" strategy then drops.
        num_additional_image_tokens=1 if tower.kind == "clip" else 0,
    )


def vlm_config(text_config: Any, tower: VisionTower, image_token_id: int) -> LlavaConfig:
    """LLaVA's config around ``text_config``; the tower's last layer feeds the projector (a
    two-layer tower has no penultimate layer worth the name, LLaVA's default -2)."""
    return LlavaConfig(
        vision_config=tower.config(),
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=tower.image_tokens,
        vision_feature_select_strategy=tower.select_strategy,
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )


def build_vlm(
    tokenizer: PreTrainedTokenizerBase,
    tower: VisionTower = VisionTower(),
    text: ModelSettings | Path | None = None,
    max_length: int = 256,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A seeded LLaVA and its processor. ``text``: the language model's settings (a fresh
    model of ``max_length`` positions; None: the default tiny Llama) or a local causal-LM
    checkpoint whose weights it gets; ``tokenizer`` must be that checkpoint's (``<image>`` is
    added to it here)."""
    processor = build_processor(tokenizer, tower)
    tok = processor.tokenizer
    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    special["bos_token_id"] = tok.bos_token_id
    lm = None
    if isinstance(text, Path):
        lm = load_model(text, "sdpa")
        if lm.get_input_embeddings().num_embeddings < len(tok):  # room for <image>
            lm.resize_token_embeddings(len(tok), mean_resizing=False)
        text_config = lm.config
    else:
        text_config = model_config(text or ModelSettings(), len(tok), max_length, special)
    torch.manual_seed(seed)
    config = vlm_config(text_config, tower, processor.image_token_id)
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    if lm is not None:
        model.model.language_model.load_state_dict(lm.model.state_dict())
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.generation_config.eos_token_id = _stop_ids(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def _stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    from flywheel.train.tokenizer import stop_token_ids

    return stop_token_ids(tokenizer)


def save_vlm(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out: Path) -> Path:
    """Write the model (safetensors) and its processor (tokenizer, image processor, chat
    template) into one Hugging Face directory."""
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_vlm(
    path: Path, attn_implementation: str = "sdpa"
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A local LLaVA directory (never downloaded) and its processor, with a clear error if
    either is absent."""
    path = Path(path)
    for name in ("config.json", "processor_config.json"):
        if not (path / name).exists():
            raise ArtifactError(f"no vision-language model at {path} ({name} missing)")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=torch.float32, local_files_only=True
    )
    return model, processor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel.train.vlm.model", description=__doc__)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer directory")
    parser.add_argument("--out", type=Path, required=True, help="where to save the model")
    parser.add_argument("--language-model", type=Path, help="a causal-LM checkpoint to start from")
    parser.add_argument("--tower", choices=("clip", "siglip"), default="clip")
    args = parser.parse_args(argv)
    from flywheel.train.tokenizer import load_tokenizer

    text = args.language_model if args.language_model else ModelSettings()
    model, processor = build_vlm(load_tokenizer(args.tokenizer), VisionTower(args.tower), text)
    save_vlm(model, processor, args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()):,} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
