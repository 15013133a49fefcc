"""Vision-language models: a tiny LLaVA on the project's language model and tokenizer.

    python -m flywheel.train.vlm.model --tokenizer TOKENIZER_DIR --out VLM_DIR   # build one

``model`` builds and loads the model and its processor (a Hugging Face directory that
transformers, and vLLM where it supports the architecture, load); ``train`` fine-tunes it with
TRL's vision-language collators (SFT with assistant-only loss, DPO on image preference pairs),
resumable like the text stages; ``generate`` answers image questions greedily.

Part of the training plane: may import ``flywheel.core`` and ``flywheel.data``.
"""
