"""The optimizers a training stage can use, from one factory: AdamW, Adafactor, Muon (+AdamW).

    python bench/optimizers.py          # loss after a fixed budget and state bytes per parameter

``build_optimizer(model, OptimizerArgs)`` is what pre-training (``flywheel.train.pretrain``),
every TRL trainer (SFT, cycle retraining, DPO/GRPO/RLOO: ``flywheel.train.finetune.
use_optimizer`` hands ``TrainerOptimizer`` to Trainer) and PPO build; ``optimizer_args`` turns a
spec section (``flywheel.core.settings.train.OptimizerSettings``) into its plain arguments.

- adamw: ``trainer.make_optimizer`` (decay on matrices only). State: two fp32 moments, 8 bytes
  per parameter.
- adafactor: ``torch.optim.Adafactor`` on the same groups. It keeps, per matrix, only the row
  and column means of the squared gradient (n + m numbers for an n x m matrix, Shazeer & Stern
  2018) and no momentum: ~0 bytes per parameter. Its lr is relative: a step moves a tensor by
  about ``lr * RMS(tensor)``, so ~1e-2 is its usual value, not AdamW's 1e-3.
- muon: ``torch.optim.Muon`` on the hidden matrices (one fp32 momentum buffer, 4 bytes per
  parameter), whose update is the momentum orthogonalised by Newton-Schulz; AdamW on what
  Muon is not meant for (embeddings, the LM head, norms, biases). Both live in one
  ``MuonWithAdamW``. With ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's "Muon is Scalable
  for LLM Training") the update's RMS matches AdamW's, so both parts share one lr.

``state_bytes_per_param`` measures what an optimizer holds, for the stages' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from flywheel.train.trainer import make_optimizer, param_groups


@dataclass(frozen=True)
class OptimizerArgs:
    """Everything ``build_optimizer`` needs; the knobs' defaults are torch's own, except
    ``muon_adjust_lr`` (torch: "original"), so that Muon shares AdamW's lr."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fused: bool = False  # AdamW's fused kernel (``trainer.has_fused_adamw``)
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    muon_adjust_lr: str = "match_rms_adamw"
    muon_adamw_lr: float | None = None  # None: lr
    adafactor_beta2_decay: float = -0.8
    adafactor_d: float = 1.0


# named as the spec names them (flywheel.core.settings.train.OptimizerSettings)
KNOBS = tuple(f.name for f in fields(OptimizerArgs) if f.name.startswith(("muon_", "adafactor_")))


def optimizer_args(settings: Any, **numbers: Any) -> OptimizerArgs:
    """The optimizer of a spec section: its name and knobs (null ones keep the defaults),
    with ``numbers`` (lr, weight_decay, betas, eps, fused) given by the caller."""
    knobs = {k: getattr(settings, k) for k in KNOBS if getattr(settings, k, None) is not None}
    return OptimizerArgs(name=settings.optimizer, **knobs, **numbers)


def train_optimizer_args(settings: Any, fused: bool = False) -> OptimizerArgs:
    """``optimizer_args`` of a ``TrainSettings`` (pre-training, SFT, cycles, preference)."""
    s = settings
    betas = (s.beta1, s.beta2)
    return optimizer_args(
        s, lr=s.lr, weight_decay=s.weight_decay, betas=betas, eps=s.eps, fused=fused
    )


def build_optimizer(model: torch.nn.Module, args: OptimizerArgs) -> torch.optim.Optimizer:
    """The optimizer ``args`` names, over ``model``'s trainable parameters."""
    if args.name == "adamw":
        return make_optimizer(model, args.lr, args.weight_decay, args.betas, args.eps, args.fused)
    if args.name == "adafactor":
        groups = [g for g in param_groups(model, args.weight_decay) if g["params"]]
        return torch.optim.Adafactor(
            groups, lr=args.lr, beta2_decay=args.adafactor_beta2_decay, d=args.adafactor_d
        )
    if args.name == "muon":
        return MuonWithAdamW(model, args)
    raise ValueError(f"unknown optimizer {args.name!r}; expected adamw, adafactor or muon")


def split_for_muon(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(hidden matrices, everything else) among the trainable parameters.

    Muon orthogonalises a matrix's update, which suits maps from hidden state to hidden state.
    An embedding is a lookup table (each row is updated only when its token occurs), the output
    head maps to a vocabulary, and a matrix with one row or column (a scalar value head) would
    only be normalised: those go to AdamW, as Muon's authors do, with norms and biases. A tied
    head is the embedding's own tensor and ``named_parameters`` yields it once.
    """
    skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if output is not None:
        skip.add(id(output.weight))
    hidden, other = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            matrix = p.ndim == 2 and min(p.shape) > 1 and id(p) not in skip
            (hidden if matrix else other).append(p)
    return hidden, other


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices and AdamW on the rest, as one optimizer.

    torch's Muon takes 2-D parameters only, and a model has others; the training loop, LambdaLR,
    gradient clipping, ``accelerate.prepare`` (and its GradScaler) and the checkpoint code all
    expect one optimizer. This one's ``param_groups`` are the two inner optimizers' own group
    dicts (Muon's first), so a scheduler setting ``group["lr"]`` sets theirs, and its ``state``
    is one dict both inner optimizers write into, so the base class's ``state_dict`` and
    ``load_state_dict`` cover both. ``load_state_dict`` replaces groups and state with new
    objects; ``_link`` then hands those to the inner optimizers again.
    """

    def __init__(self, model: torch.nn.Module, args: OptimizerArgs) -> None:
        hidden, other = split_for_muon(model)
        if not hidden:
            raise ValueError(
                "optimizer muon: the model has no trainable hidden matrices for Muon; use adamw"
            )
        muon = torch.optim.Muon(
            [{"params": hidden}],
            lr=args.lr,
            weight_decay=args.weight_decay,
            momentum=args.muon_momentum,
            nesterov=args.muon_nesterov,
            ns_steps=args.muon_ns_steps,
            adjust_lr_fn=args.muon_adjust_lr,
        )
        self._parts: list[torch.optim.Optimizer] = [muon]
        # AdamW's groups as make_optimizer makes them: decay on matrices (embeddings), not
        # on norms and biases. With LoRA every trainable tensor may be a hidden matrix.
        rest = [g for g in _groups(other, args.weight_decay) if g["params"]]
        if rest:
            adamw_lr = args.muon_adamw_lr or args.lr
            fused = args.fused or None
            adamw = torch.optim.AdamW(
                rest, lr=adamw_lr, betas=args.betas, eps=args.eps, fused=fused
            )
            self._parts.append(adamw)
        self._sizes = [len(part.param_groups) for part in self._parts]
        groups = [g for part in self._parts for g in part.param_groups]
        # the base class sets up its hooks and an empty state; the groups become the parts'
        super().__init__([p for g in groups for p in g["params"]], {})
        self.param_groups = groups
        self._link()

    def _link(self) -> None:
        start = 0
        for part, size in zip(self._parts, self._sizes, strict=True):
            part.param_groups = self.param_groups[start : start + size]
            part.state = self.state
            start += size

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self._parts:
            part.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()


def _groups(params: list[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in params if p.ndim >= 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def state_bytes_per_param(optimizer: Any) -> float:
    """Bytes of optimizer state per trainable parameter, as the live optimizer holds them.

    The sum of every state tensor's bytes (moments, factors, momentum buffers, step counters)
    over the number of trainable parameters it steps: frozen ones (LoRA's base weights) are
    not counted. Measured after a step: optimizers create their state lazily. Wrappers
    (Accelerate's, DeepSpeed's) keep the real optimizer as ``.optimizer``.
    """
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    params = {id(p): p for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    count = sum(p.numel() for p in params.values())
    held = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    return held / count if count else 0.0


def optimizer_metadata(name: str, optimizer: Any) -> dict[str, Any]:
    """What a stage reports about its optimizer (pre-training's and SFT's metadata)."""
    return {
        "optimizer": name,
        "optimizer_state_bytes_per_param": round(state_bytes_per_param(optimizer), 4),
    }


class TrainerOptimizer:
    """``build_optimizer`` as a transformers ``Trainer`` optimizer factory.

    Trainer's ``optimizer_cls_and_kwargs`` takes a class that is not a torch Optimizer as a
    factory: it calls ``TrainerOptimizer()(model, args=...)`` with the model to train, so the
    parameters are split by module (embedding, head) here as in pre-training.
    """

    def __call__(self, model: torch.nn.Module, args: OptimizerArgs) -> torch.optim.Optimizer:
        return build_optimizer(model, args)
