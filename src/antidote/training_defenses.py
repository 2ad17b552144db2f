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
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
# torch itself is imported where a defense computes: the rule files read TRAINING_DEFENSES while
# Snakemake parses them, which needs no torch (as antidote.prune's DEFENSES).

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
        import torch

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
        import torch

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


class GuideBatches:
    """Batches of a defense's own data (Lisa's safe answers, RepNoise's harmful pairs): drawn in a
    seeded random order, reshuffled when used up (their RandomSampler); the last batch of a pass
    may be smaller, as theirs. ``examples`` are tokenized, ``collate`` makes a batch of some."""

    def __init__(self, examples: list[dict], collate: Callable[[list[dict]], dict], batch_size: int, seed: int):
        self.examples, self.collate, self.batch_size = examples, collate, batch_size
        self.rng, self.order = random.Random(seed), []

    def next(self) -> dict:
        if not self.order:
            self.order = list(range(len(self.examples)))
            self.rng.shuffle(self.order)
        picked, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return self.collate([self.examples[i] for i in picked])

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = state["order"]


class Lisa(TrainingDefense):
    """Alternating alignment and fine-tuning steps with proximal terms (see the module's text).
    ``guide``: the guide data's tokenized examples (safe answers), drawn by :class:`GuideBatches`."""

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
        self.guide = GuideBatches(guide, collate, batch_size, seed)
        self.rho, self.alignment_steps, self.finetune_steps = rho, alignment_steps, finetune_steps
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.phase, self.clock = "alignment", 0
        initial = {name: p.detach().clone() for name, p in self.params.items()}
        self.anchors = {"alignment": initial, "finetune": {n: w.clone() for n, w in initial.items()}}

    def batch(self, batch, step):
        if step > 0:
            length = self.alignment_steps if self.phase == "alignment" else self.finetune_steps
            if self.clock % length == 0:
                # the phase that ends leaves its weights as the other phase's anchor
                self.anchors[self.phase] = {name: p.detach().clone() for name, p in self.params.items()}
                self.phase = "finetune" if self.phase == "alignment" else "alignment"
                self.clock = 0
        return self.guide.next() if self.phase == "alignment" else batch

    def loss(self, model, batch, step, task_loss):
        loss = task_loss(model, batch)
        if step > self.PROXIMAL_AFTER * self.total_steps and self.rho > 0:
            other = self.anchors["finetune" if self.phase == "alignment" else "alignment"]
            loss = loss + self.rho / 2 * sum((p - other[name]).pow(2).sum() for name, p in self.params.items())
        return loss

    def after_step(self, step):
        self.clock += 1

    def state_dict(self):
        return {"phase": self.phase, "clock": self.clock, "anchors": self.anchors, "guide": self.guide.state_dict()}

    def load_state_dict(self, state):
        self.phase, self.clock, self.anchors = state["phase"], state["clock"], state["anchors"]
        self.guide.load_state_dict(state["guide"])


def mmd(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Maximum mean discrepancy between two batches of vectors (rows), with a sum of Gaussian
    kernels whose bandwidths are the mean pairwise squared distance times kernel_mul^(i - 2)
    (their MMD_loss; the bandwidth is not differentiated through)."""
    import torch

    total = torch.cat([source, target])
    # ||a - b||^2 from the Gram matrix: theirs subtracts every pair of rows (n x n x features, each
    # layer's kept for the backward pass), the cost of most of a step here; equal within rounding
    squares = total.pow(2).sum(1)
    distances = (squares.unsqueeze(0) + squares.unsqueeze(1) - 2 * total @ total.T).clamp_min(0)
    n = len(total)
    bandwidth = distances.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    kernels = sum(torch.exp(-distances / (bandwidth * kernel_mul ** i)) for i in range(kernel_num))
    k = len(source)
    return (kernels[:k, :k] + kernels[k:, k:] - kernels[:k, k:] - kernels[k:, :k]).mean()


def differing_tokens(ids: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Where ``ids`` differs from ``other`` cut or padded with 0 to its shape (their
    adapt_dimension_b2a and token inequality): the positions RepNoise's terms read."""
    import torch

    other = other[:ids.shape[0], :ids.shape[1]]
    other = torch.nn.functional.pad(other, (0, ids.shape[1] - other.shape[1], 0, ids.shape[0] - other.shape[0]))
    return ids != other


def masked_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the sequence's own tokens where ``mask`` holds; logits outside it are
    zeroed and a label that is 0 after masking (token id 0 too) is ignored: their masked_token_ce_loss."""
    import torch

    logits = logits[:, :-1].float() * mask[:, :-1].unsqueeze(-1)
    labels = ids[:, 1:] * mask[:, 1:]
    labels = labels.masked_fill(labels == 0, -100)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class RepNoise(TrainingDefense):
    """Representation noising, an alignment-stage defense (their ``RepNoiseTrainer`` and
    ``rep_noise_loss``). Each step draws a batch of harmful pairs (prompt, harmful answer:
    ``guide``) beside the loop's batch of safe data, and its loss is

        CE(safe) + beta * mean over layers of MMD(MLP output on harmful, Gaussian noise) - alpha * log CE(harmful)

    where the two cross-entropies are next-token losses over every position where the harmful and
    the safe batch hold different tokens (so a shared prompt template is left out, and padding
    counts where one row is longer), on the sequence's own tokens, answer and prompt alike, and
    the MLP outputs and their noise are zeroed outside those positions. Their loop runs over the
    harmful pairs and draws a random safe batch each step; with their equal sets (5,000 of each)
    that is the same as this loop over the safe data drawing harmful batches, which keeps the
    steps and the safe examples of plain alignment where the harmful pairs are fewer."""

    def __init__(self, model, total_steps: int, guide: list[dict], collate: Callable[[list[dict]], dict],
                 batch_size: int, alpha: float = 0.1, beta: float = 0.001, seed: int = 0):
        super().__init__(model, total_steps)
        if not guide:
            raise ValueError("repnoise: no harmful pairs (data.sizes.repnoise_pool is 0?)")
        self.harmful = GuideBatches(guide, collate, batch_size, seed)
        self.alpha, self.beta = alpha, beta
        self.modules = list(mlp_modules(model).values())

    def loss(self, model, batch, step, task_loss):
        import torch

        harmful = self.harmful.next()
        features = {}
        hooks = [m.register_forward_hook(lambda _m, _in, out, i=i: features.__setitem__(i, out))
                 for i, m in enumerate(self.modules)]
        try:
            harmful_logits = model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"]).logits
        finally:
            for hook in hooks:
                hook.remove()
        mask = differing_tokens(harmful["input_ids"], batch["input_ids"])
        noise = 0
        for i in range(len(self.modules)):
            hidden = features[i] * mask.unsqueeze(-1)
            gaussian = torch.randn_like(hidden) * mask.unsqueeze(-1)
            noise = noise + mmd(hidden.flatten(1).float(), gaussian.flatten(1).float())
        noise = noise / len(self.modules)
        harmful_loss = masked_token_loss(harmful_logits, harmful["input_ids"], mask)
        safe_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        safe_loss = masked_token_loss(safe_logits, batch["input_ids"],
                                      differing_tokens(batch["input_ids"], harmful["input_ids"]))
        return safe_loss + self.beta * noise - self.alpha * torch.log(harmful_loss)

    def state_dict(self):
        return {"harmful": self.harmful.state_dict()}

    def load_state_dict(self, state):
        self.harmful.load_state_dict(state["harmful"])


@dataclass(frozen=True)
class TrainingDefenseSpec:
    make: type[TrainingDefense]
    stage: str            # "align" or "finetune": the training it applies to
    guide: str | None     # the data of its own it reads: "safe" (the alignment data) or "harmful" (harmful pairs)
    summary: str
    # a training step's time against plain SFT's, measured (bench/training_defense_cost.py, the
    # hyperparams study's jobs): the cluster's time estimate of a training scales by it
    cost: float = 1.0


# The training-time defenses, by the name the config gives them, in the paper's order.
TRAINING_DEFENSES = {
    "sft": TrainingDefenseSpec(TrainingDefense, "any", None, "plain supervised fine-tuning on the answers"),
    "vaccine": TrainingDefenseSpec(Vaccine, "align", None,
                                   "alignment whose update is the gradient under a perturbation of the attention "
                                   "outputs along their own gradient, of norm rho (2)", cost=2.0),
    "repnoise": TrainingDefenseSpec(RepNoise, "align", "harmful",
                                    "alignment that pushes the MLP outputs on harmful pairs towards Gaussian noise "
                                    "(beta 0.001) and their answers' likelihood down (alpha 0.1)", cost=2.4),
    "lisa": TrainingDefenseSpec(Lisa, "finetune", "safe",
                                "alternating alignment steps on safe answers and fine-tuning steps, each pulled "
                                "towards the other's weights (rho 1; 100 / 900 steps)"),
    "ldifs": TrainingDefenseSpec(LDIFS, "finetune", None,
                                 "fine-tuning with a feature-space distance to the aligned model's MLP outputs "
                                 "(rho 1e-4; a layer's term only while below 0.1)", cost=1.4),
}
