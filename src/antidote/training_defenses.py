"""Defenses that act while a model trains: each changes the loss or the step of the one loop in
:func:`antidote.train.train_lora` (its batches, checkpoints, resume and answer-only loss stay
shared), and is one entry of :data:`TRAINING_DEFENSES`.

Transcribed from the authors' harness (git-disl/Antidote, ``trainer.py``), which produced the
paper's baseline numbers; where it differs from the method's own paper, the code is followed and
the difference named:

- ``ldifs`` (``LDIFSTrainer``): the loss gains, per decoder layer, ``rho/2 * ||m_l - m_l^0||^2``,
  the squared distance between the layer's MLP output and the aligned model's on the same batch
  (every position, padding included, as theirs). Their quirk, kept as the default: a layer's
  term is added only while it is below 0.1 (``threshold``; ``null`` adds every term, the clean
  form). The aligned model is this model with its adapter switched off: their deep copy of the
  model at step 0, whose fresh adapter adds nothing, computes the same features.
- ``vaccine`` (``BaseTrainer``, an alignment-stage defense): each step runs twice. The first pass
  records the gradient of the loss at the output of every attention block; those gradients,
  scaled together to norm ``rho`` (``rho * g / (||g|| + 1e-7)``, ``||g||`` over all blocks), are
  added to the same outputs in the second pass as a constant perturbation, and the second pass's
  gradient is the update (the first pass's is dropped).
- ``lisa`` (``ADMMTrainer``): alignment steps on the guide data (safe answers) and fine-tuning
  steps alternate, ``alignment_steps`` then ``finetune_steps``, starting with alignment. Each
  phase's loss gains ``rho/2 * ||w - w_other||^2`` over the trainable weights, ``w_other`` the
  weights at the end of the other phase's latest stretch (both the initial weights at first),
  but only after the first 10% of all steps. A fine-tuning batch drawn during an alignment step
  is not used, as in theirs: the number of steps is the fine-tuning's.
"""

from __future__ import annotations

import contextlib
import random
import re
from dataclasses import dataclass
from typing import Callable

import torch

# A decoder layer's MLP and attention block, by module name: ...model.layers.3.mlp, ...layers.3.self_attn
# (Llama, Qwen2, Mistral, Gemma)
MLP_MODULE = re.compile(r"(?:^|\.)layers\.\d+\.mlp$")
ATTENTION_MODULE = re.compile(r"(?:^|\.)layers\.\d+\.self_attn$")


class TrainingDefense:
    """Plain supervised fine-tuning (``sft``), and the hooks through which the others change it.

    The loop calls, around each optimizer step ``step`` (0 for the first): :meth:`batch` (the
    batch to train on), :meth:`loss` (its loss), then :meth:`after_step`. :meth:`state_dict` is
    saved with every checkpoint and given back by :meth:`load_state_dict` on resume."""

    def __init__(self, model, total_steps: int, **settings):
        if settings:
            raise ValueError(f"{type(self).__name__} takes no settings; got {sorted(settings)}")
        self.total_steps = total_steps

    def batch(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        return batch

    def loss(self, model, batch: dict[str, torch.Tensor], step: int, task_loss: Callable) -> torch.Tensor:
        return task_loss(model, batch)

    def after_step(self, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def mlp_modules(model) -> dict[str, torch.nn.Module]:
    modules = {name: m for name, m in model.named_modules() if MLP_MODULE.search(name)}
    if not modules:
        raise ValueError("ldifs: the model has no decoder layer MLP (a module named ...layers.N.mlp)")
    return modules


class LDIFS(TrainingDefense):
    """Feature-space distance to the aligned model's per-layer MLP outputs (see the module's text)."""

    def __init__(self, model, total_steps: int, rho: float = 1e-4, threshold: float | None = 0.1):
        super().__init__(model, total_steps)
        self.rho, self.threshold = rho, threshold
        self.modules = mlp_modules(model)

    @contextlib.contextmanager
    def recording(self):
        """Each layer's MLP output in the forward passes run inside: a dict filled as they run."""
        found = {}
        hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: found.__setitem__(name, out))
                 for name, m in self.modules.items()]
        try:
            yield found
        finally:
            for hook in hooks:
                hook.remove()

    def aligned_features(self, model, batch) -> dict[str, torch.Tensor]:
        """The aligned model's features: the decoder with the adapter switched off (no logits needed)."""
        with torch.no_grad(), model.disable_adapter(), self.recording() as found:
            model.get_base_model().model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return found

    def distances(self, features, aligned) -> dict[str, torch.Tensor]:
        """Per layer, rho/2 * the squared distance of its features to the aligned model's."""
        return {name: self.rho / 2 * (out.float() - aligned[name].float()).pow(2).sum() for name, out in features.items()}

    def terms(self, model, batch) -> dict[str, torch.Tensor]:
        with self.recording() as features:
            model.get_base_model().model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.distances(features, self.aligned_features(model, batch))

    def loss(self, model, batch, step, task_loss):
        with self.recording() as features:  # the task loss's own forward pass gives the model's features
            loss = task_loss(model, batch)
        terms = self.distances(features, self.aligned_features(model, batch))
        return loss + sum(t for t in terms.values() if self.threshold is None or t < self.threshold)


class Vaccine(TrainingDefense):
    """Perturbation-aware alignment: the update is the gradient at attention outputs perturbed by
    the first pass's own gradient, scaled to norm rho (see the module's text)."""

    def __init__(self, model, total_steps: int, rho: float = 2.0):
        super().__init__(model, total_steps)
        self.rho = rho
        self.blocks = {name: m for name, m in model.named_modules() if ATTENTION_MODULE.search(name)}
        if not self.blocks:
            raise ValueError("vaccine: the model has no attention block (a module named ...layers.N.self_attn)")

    def perturbations(self, model, batch, task_loss) -> dict[str, torch.Tensor]:
        """The first pass: the loss's gradient at each block's output, scaled together to norm rho."""
        gradients = {}
        hooks = [m.register_full_backward_hook(
            lambda _m, _grad_in, grad_out, name=name: gradients.__setitem__(name, grad_out[0].detach().clone()))
            for name, m in self.blocks.items()]
        try:
            task_loss(model, batch).backward()
        finally:
            for hook in hooks:
                hook.remove()
        model.zero_grad(set_to_none=True)
        norm = torch.stack([g.norm(p=2) for g in gradients.values()]).norm(p=2)
        return {name: g * (self.rho / (norm + 1e-7)) for name, g in gradients.items()}

    def loss(self, model, batch, step, task_loss):
        shift = self.perturbations(model, batch, task_loss)
        hooks = [m.register_forward_hook(lambda _m, _in, out, name=name: (out[0] + shift[name], *out[1:]))
                 for name, m in self.blocks.items()]
        try:
            return task_loss(model, batch)
        finally:
            for hook in hooks:
                hook.remove()


class Lisa(TrainingDefense):
    """Alternating alignment and fine-tuning steps with proximal terms (see the module's text).
    ``guide``: the guide data's tokenized examples, and ``collate`` makes a batch of some of them;
    they are drawn in a seeded random order, reshuffled when used up (their RandomSampler)."""

    PROXIMAL_AFTER = 0.1  # of all steps: the proximal terms start after the first 10%

    def __init__(self, model, total_steps: int, guide: list[dict], collate: Callable[[list[dict]], dict],
                 batch_size: int, rho: float = 1.0, alignment_steps: int = 100, finetune_steps: int = 900,
                 seed: int = 0):
        super().__init__(model, total_steps)
        if alignment_steps < 1 or finetune_steps < 1:
            raise ValueError(f"lisa: alignment_steps and finetune_steps must be at least 1; got {alignment_steps} "
                             f"and {finetune_steps}")
        if not guide:
            raise ValueError("lisa: no guide data (the alignment data's safe answers)")
        self.guide, self.collate, self.batch_size = guide, collate, batch_size
        self.rho, self.alignment_steps, self.finetune_steps = rho, alignment_steps, finetune_steps
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.phase, self.clock, self.rng, self.order = "alignment", 0, random.Random(seed), []
        initial = {name: p.detach().clone() for name, p in self.params.items()}
        self.anchors = {"alignment": initial, "finetune": {n: w.clone() for n, w in initial.items()}}

    def guide_batch(self) -> dict:
        if not self.order:  # a new pass over the guide data (its last batch may be smaller, as theirs)
            self.order = list(range(len(self.guide)))
            self.rng.shuffle(self.order)
        picked, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return self.collate([self.guide[i] for i in picked])

    def batch(self, batch, step):
        if step > 0:
            length = self.alignment_steps if self.phase == "alignment" else self.finetune_steps
            if self.clock % length == 0:
                # the phase that ends leaves its weights as the other phase's anchor
                self.anchors[self.phase] = {name: p.detach().clone() for name, p in self.params.items()}
                self.phase = "finetune" if self.phase == "alignment" else "alignment"
                self.clock = 0
        return self.guide_batch() if self.phase == "alignment" else batch

    def loss(self, model, batch, step, task_loss):
        loss = task_loss(model, batch)
        if step > self.PROXIMAL_AFTER * self.total_steps and self.rho > 0:
            other = self.anchors["finetune" if self.phase == "alignment" else "alignment"]
            loss = loss + self.rho / 2 * sum((p - other[name]).pow(2).sum() for name, p in self.params.items())
        return loss

    def after_step(self, step):
        self.clock += 1

    def state_dict(self):
        return {"phase": self.phase, "clock": self.clock, "rng": self.rng.getstate(), "order": self.order,
                "anchors": self.anchors}

    def load_state_dict(self, state):
        self.phase, self.clock, self.order, self.anchors = state["phase"], state["clock"], state["order"], state["anchors"]
        self.rng.setstate(state["rng"])


@dataclass(frozen=True)
class TrainingDefenseSpec:
    make: type[TrainingDefense]
    stage: str            # "align" or "finetune": the training it applies to
    guide: bool           # whether it reads the guide data (the alignment data's safe answers)
    summary: str


# The training-time defenses, by the name the config gives them.
TRAINING_DEFENSES = {
    "sft": TrainingDefenseSpec(TrainingDefense, "any", False, "plain supervised fine-tuning on the answers"),
    "vaccine": TrainingDefenseSpec(Vaccine, "align", False,
                                   "alignment whose update is the gradient under a perturbation of the attention "
                                   "outputs along their own gradient, of norm rho (2)"),
    "ldifs": TrainingDefenseSpec(LDIFS, "finetune", False,
                                 "fine-tuning with a feature-space distance to the aligned model's MLP outputs "
                                 "(rho 1e-4; a layer's term only while below 0.1)"),
    "lisa": TrainingDefenseSpec(Lisa, "finetune", True,
                                "alternating alignment steps on safe answers and fine-tuning steps, each pulled "
                                "towards the other's weights (rho 1; 100 / 900 steps)"),
}
