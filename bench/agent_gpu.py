"""Multi-turn collection and PPO with a ~110M model on a CUDA GPU: throughput.

    python bench/agent_gpu.py            # on a CUDA machine (bench/gpu_session.sh runs it)
    python bench/agent_gpu.py --smoke    # a tiny model on the CPU: checks the script

Model: Llama, hidden 768, 12 layers, 12 heads, intermediate 3072 (GPT-2 small's body) over
``bench/rollout.py``'s NumberGuess tokenizer (vocab 2048, trained here): ~115M parameters,
random weights, seeded, written as a flywheel checkpoint. A random model writes no tool call,
so every turn generates ``--max-new-tokens`` tokens and is answered with the collector's
no-call error, and every episode runs ``--max-turns`` turns: the work is fixed, not learned.

1. Collection, as the ``trajectories`` asset plays (``flywheel.loop.agents.collect`` with
   ``TransformersPolicy``, the model in bf16 on the GPU as ``from_checkpoint`` loads it):
   ``--episodes`` episodes batched (every live episode's next turn in one sampling loop, KV
   caches kept between turns) against one episode at a time over the first ``--sequential``
   of them (an episode alone costs the same whichever it is); episodes/s, generated tokens/s.
2. PPO, as ``cycles.method: ppo`` runs it (``flywheel.loop.agents.ppo_train.train_ppo``):
   policy and value model from the checkpoint, a frozen reference, fp32 weights under
   ``--mixed-precision`` (bf16 on a GPU), ``--iterations`` iterations of
   ``--episodes-per-iteration`` episodes after one untimed warm-up iteration in the same
   process; seconds per iteration and each phase's (play, score, update), rollouts/s, and the
   update's tokens/s (every rollout's tokens through policy and value model, per epoch).

The last line is key=value pairs; ``ratio`` = batched over one-at-a-time episodes/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rollout  # noqa: E402  (this directory's: its tokenizer, settings and collection paths)

from flywheel.core.settings.rl import PpoSettings  # noqa: E402
from flywheel.envs.guess import NumberGuess, train_episodes  # noqa: E402
from flywheel.loop.agents.ppo_rollouts import EnvRollouts  # noqa: E402
from flywheel.loop.agents.ppo_train import train_ppo  # noqa: E402
from flywheel.train.model import count_parameters  # noqa: E402

SHAPE = {"model_type": "llama", "hidden_size": 768, "num_hidden_layers": 12}
SHAPE |= {"num_attention_heads": 12, "num_key_value_heads": 12, "intermediate_size": 3072}
SMOKE = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}
SMOKE |= {"num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 128}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model and little work, on CPU")
    p.add_argument("--episodes", type=int, default=512, help="collection: episodes batched")
    p.add_argument("--sequential", type=int, default=32, help="collection: played one by one")
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--iterations", type=int, default=3, help="PPO: timed iterations")
    p.add_argument("--episodes-per-iteration", type=int, default=256)
    p.add_argument("--minibatch-size", type=int, default=32)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--mixed-precision", default=None, help="PPO: bf16 | fp16 | no")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.checkpoint = None  # rollout.build: a tokenizer trained here, random weights
    if args.smoke:
        args.episodes, args.sequential, args.iterations = 8, 2, 1
        args.episodes_per_iteration, args.minibatch_size, args.max_new_tokens = 4, 2, 8
    if args.mixed_precision is None:
        args.mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    return args


def make_checkpoint(args: argparse.Namespace, s: rollout.Setup, directory: Path) -> Any:
    """``bench/rollout.py``'s tokenizer (saved in ``directory``) and random-weights model of
    ``s.shape``, the model saved beside it: a checkpoint PPO can start from."""
    tok, model = rollout.build(args, s, directory)
    model.save_pretrained(directory)
    return tok, model


def collection(args: argparse.Namespace, s: rollout.Setup, tok: Any, model: Any) -> dict:
    if torch.cuda.is_available():  # as TransformersPolicy.from_checkpoint places a checkpoint
        model = model.to("cuda", dtype=torch.bfloat16)
    episodes = train_episodes(args.episodes, s.env, seed=args.seed)
    rollout.run(args, s, tok, model, episodes[:8], "batched")  # warm-up, untimed
    out = {}
    for path, some in (("batched", episodes), ("sequential", episodes[: args.sequential])):
        seconds, _, frame = rollout.run(args, s, tok, model, some, path)
        generated = sum(sum(m) for m in frame["completion_mask"].to_list())
        out[f"{path}_eps_s"] = frame.height / seconds
        out[f"{path}_tok_s"] = generated / seconds
        print(f"collection {path}: {frame.height} episodes in {seconds:.2f} s, "
              f"{generated} generated tokens")  # fmt: skip
    return out


def ppo(args: argparse.Namespace, s: rollout.Setup, checkpoint: Path, work: Path) -> dict:
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=args.mixed_precision)
    pool = train_episodes(1024, s.env, seed=args.seed + 1)
    rollouts = EnvRollouts(lambda: NumberGuess(s.env), pool, "guess")

    def settings(iterations: int) -> PpoSettings:
        return PpoSettings(
            iterations=iterations,
            episodes_per_iteration=args.episodes_per_iteration,
            minibatch_size=args.minibatch_size,
            ppo_epochs=args.ppo_epochs,
            max_turns=args.max_turns,
            max_new_tokens=args.max_new_tokens,
            save_every=1000,
        )

    train_ppo(checkpoint, work / "warm", work / "warm.work", rollouts, settings(1), None, acc)
    began = time.perf_counter()
    result = train_ppo(
        checkpoint, work / "out", work / "out.work", rollouts, settings(args.iterations), None, acc
    )
    total = time.perf_counter() - began
    played = args.iterations * args.episodes_per_iteration
    tokens = sum(h["sequence_tokens"] for h in result["history"]) * args.episodes_per_iteration
    out = {"ppo_iter_s": total / args.iterations, "ppo_rollouts_s": played / total}
    for phase in ("collect", "score", "update"):
        out[f"ppo_{phase}_share"] = result[f"{phase}_s"] / total
    out["ppo_update_tok_s"] = tokens * args.ppo_epochs / result["update_s"]
    out["ppo_generated_tok_s"] = (
        sum(h["generated_tokens"] for h in result["history"])
        * args.episodes_per_iteration
        / result["collect_s"]
    )
    print(f"ppo: {args.iterations} iterations of {args.episodes_per_iteration} episodes in "
          f"{total:.1f} s ({args.mixed_precision}); {result['collect_s']:.1f} s playing, "
          f"{result['score_s']:.1f} s scoring, {result['update_s']:.1f} s updating")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = rollout.Setup(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens)
    s.shape = SMOKE if args.smoke else SHAPE
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        tok, model = make_checkpoint(args, s, checkpoint)
        print(f"model: {count_parameters(model) / 1e6:.1f}M parameters, vocab {len(tok)}, {device}")
        results = collection(args, s, tok, model)
        del model
        results |= ppo(args, s, checkpoint, Path(tmp))
    ratio = results["batched_eps_s"] / results["sequential_eps_s"]
    print(" ".join(f"{k}={v:.3f}" for k, v in results.items()) + f" ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
