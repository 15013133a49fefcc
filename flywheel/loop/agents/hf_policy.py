"""The in-process transformers policy: one left-padded ``generate`` call per turn for every
live episode, returning the generated token ids and their sampling logprobs.

    python -m pytest -q tests/loop/agents/test_hf_policy.py

It continues each context's token ids as they are (never re-rendered or re-tokenized), stops
at ``<|im_end|>`` or EOS (``flywheel.train.tokenizer.stop_token_ids``) or after
``max_new_tokens``. The logprob of a generated token is ``log_softmax(logits / temperature)``
at it (raw logits when greedy), the quantity TRL's GRPO and PPO recompute for the importance
ratio; top-k/top-p truncation is not folded in, as in TRL. Seeded per call (``seed`` + call
number) in a private RNG stream, so a collection is reproducible on the same hardware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flywheel.loop.agents.collect import Context, Step


class TransformersPolicy:
    backend = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> None:
        from flywheel.train.tokenizer import stop_token_ids

        if temperature < 0 or max_new_tokens < 1:
            raise ValueError("temperature must be >= 0 and max_new_tokens >= 1")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.stops = stop_token_ids(tokenizer)
        self.sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        self.sampling |= {"top_p": top_p, "top_k": top_k, "seed": seed}
        self.calls = 0

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path, **sampling: Any) -> TransformersPolicy:
        """The model and tokenizer of a flywheel checkpoint directory (GPU when there is one)."""
        import torch

        from flywheel.train.model import load_model
        from flywheel.train.tokenizer import load_tokenizer

        model = load_model(Path(checkpoint_dir))
        if torch.cuda.is_available():
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            model = model.to("cuda", dtype=dtype)
        return cls(model, load_tokenizer(Path(checkpoint_dir)), **sampling)

    def __call__(self, contexts: list[Context]) -> list[Step]:
        import torch

        if not contexts:
            return []
        input_ids, attention = self._left_pad([c.token_ids for c in contexts])
        s, greedy = self.sampling, self.sampling["temperature"] == 0
        sample = {} if greedy else {"temperature": s["temperature"], "top_p": s["top_p"]}
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(s["seed"] + self.calls)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=not greedy,
                top_k=s["top_k"],  # 0 is off; unset would mean transformers' 50
                max_new_tokens=s["max_new_tokens"],
                eos_token_id=self.stops,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,
                use_cache=True,
                **sample,
            )
        self.calls += 1
        new = out.sequences[:, input_ids.shape[1] :]
        logits = torch.stack(out.logits, dim=1).float()  # (batch, new tokens, vocab)
        if not greedy:
            logits = logits / s["temperature"]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        rows = zip(new.tolist(), logprobs.tolist(), strict=True)
        return [self._step(ids, lps) for ids, lps in rows]

    def _left_pad(self, rows: list[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = [[pad] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        device = self.model.device
        return torch.tensor(ids, device=device), torch.tensor(mask, device=device)

    def _step(self, ids: list[int], logprobs: list[float]) -> Step:
        """A row's tokens up to and including its first stop token (the rest is padding)."""
        stop = next((j for j, t in enumerate(ids) if t in self.stops), None)
        end = len(ids) if stop is None else stop + 1
        kept = ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        reason = "length" if stop is None else "stop"
        return Step(text, kept, logprobs[:end], reason)
