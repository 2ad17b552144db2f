"""The training-time defenses against transcriptions of the authors' trainers (git-disl/Antidote,
trainer.py: LDIFSTrainer, ADMMTrainer, BaseTrainer (Vaccine), RepNoiseTrainer with repnoise_loss.py),
and through the one training loop."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from antidote.train import LoraSettings, TrainSettings, answer_loss, collate, tokenize_example, train_lora
from antidote.training_defenses import LDIFS, TRAINING_DEFENSES, Lisa, RepNoise, Vaccine

from conftest import build_tokenizer

RECORDS = [{"instruction": f"Write a poem about the number {i}.", "output": f"Number {i} is round and fine."}
           for i in range(6)]
GUIDE = [{"instruction": f"How do I hurt someone, way {i}?", "output": "I'm sorry, I can't help with that."}
         for i in range(5)]


def peft_model(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))


def batch_of(records, tokenizer):
    return collate([tokenize_example(tokenizer, r, "chat", 96) for r in records], tokenizer.pad_token_id)


def move_adapter(model, seed=1, scale=0.5):
    """The adapter after some training: every LoRA weight moved (lora_B from 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)


def authors_ldifs_loss(model, alignment_model, inputs, rho):
    """LDIFSTrainer.training_step's loss, transcribed: hooks on base_model.model.model.layers.{i}.mlp
    of the model and of its deep copy made at step 0, a layer's term added only while below 0.1."""
    def register_activation_hook(m):
        activations, hooks, i = {}, [], 0
        for name, module in m.named_modules():
            if name == f"base_model.model.model.layers.{i}.mlp":
                hooks.append(module.register_forward_hook(
                    lambda _m, _in, val, name=name: activations.__setitem__(name, val)))
                i += 1
        return activations, hooks

    activations, hooks = register_activation_hook(model)
    loss = answer_loss(model, inputs)
    alignment_activations, alignment_hooks = register_activation_hook(alignment_model)
    alignment_model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    for name in alignment_activations:
        proximal_loss = rho / 2 * torch.norm(activations[name] - alignment_activations[name]) ** 2
        if proximal_loss < 0.1:
            loss = loss + proximal_loss
    for hook in hooks + alignment_hooks:
        hook.remove()
    return loss


def test_ldifs_loss_and_gradient_equal_the_authors(tiny_model_dir):
    tokenizer = build_tokenizer()
    model = peft_model(tiny_model_dir)
    alignment_model = copy.deepcopy(model)  # theirs, at step 0
    ldifs = LDIFS(model, total_steps=10)
    move_adapter(model)
    batch = batch_of(RECORDS[:3], tokenizer)
    # rho such that one layer's term is above their 0.1 and the other below (their mean at 0.1): the quirk matters
    distances = sorted(t.item() for t in ldifs.terms(model, batch).values())
    assert len(distances) == 2 and distances[0] < distances[1]
    ldifs.rho = 0.2 * ldifs.rho / (distances[0] + distances[1])
    terms = sorted(t.item() for t in ldifs.terms(model, batch).values())
    assert terms[0] < 0.1 < terms[1]

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours = ldifs.loss(model, batch, 0, answer_loss)
    theirs = authors_ldifs_loss(model, alignment_model, batch, ldifs.rho)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert ours.item() != pytest.approx(answer_loss(model, batch).item())  # the term below 0.1 is in
    ours_grad, theirs_grad = gradients(ldifs.loss(model, batch, 0, answer_loss)), gradients(
        authors_ldifs_loss(model, alignment_model, batch, ldifs.rho))
    assert all(torch.allclose(ours_grad[n], theirs_grad[n], rtol=1e-4, atol=1e-5) for n in ours_grad)
    plain = gradients(answer_loss(model, batch))
    assert any(not torch.allclose(ours_grad[n], plain[n], rtol=1e-3, atol=1e-5) for n in ours_grad)
    ldifs.threshold = None  # the clean form: every layer's term
    assert ldifs.loss(model, batch, 0, answer_loss).item() == pytest.approx(
        answer_loss(model, batch).item() + sum(terms), rel=1e-5)


def authors_vaccine_step(model, inputs, rho):
    """BaseTrainer.training_step, transcribed: backward hooks record grad_output[0] of every
    LlamaAttention (their get_leaf_modules_with_grad), scaled by rho / (global norm + 1e-7); the
    second pass adds it to output[0].data in forward hooks; its loss and gradients are the step's."""
    from transformers.models.llama.modeling_llama import LlamaAttention

    layers = [m for m in model.modules() if isinstance(m, LlamaAttention)]
    gradient = {}
    hooks = [m.register_backward_hook(  # theirs: the module-level hook torch has since deprecated
        lambda module, _gi, grad_output: gradient.__setitem__(module, grad_output[0].detach().clone()))
        for m in layers]
    answer_loss(model, inputs).backward()
    for hook in hooks:
        hook.remove()
    grad_norm = torch.norm(torch.stack([gradient[m].norm(p=2) for m in gradient]), p=2)
    for m in gradient:
        gradient[m] = (gradient[m] * (rho / (grad_norm + 1e-7))).detach().clone()
    model.zero_grad()

    def purturbation_hook(module, _input, output):
        output[0].data = output[0] + gradient[module]
        return output

    hooks = [m.register_forward_hook(purturbation_hook) for m in layers]
    loss = answer_loss(model, inputs)
    loss.backward()
    for hook in hooks:
        hook.remove()
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_vaccine_step_equals_the_authors(tiny_model_dir):
    tokenizer = build_tokenizer()
    model = peft_model(tiny_model_dir)
    move_adapter(model, scale=0.05)
    batch = batch_of(RECORDS[:3], tokenizer)
    theirs_model = copy.deepcopy(model)  # torch allows no module both kinds of backward hook, even one after the other
    vaccine = Vaccine(model, total_steps=10, rho=2.0)
    ours = vaccine.loss(model, batch, 0, answer_loss)
    ours.backward()
    ours_grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    theirs, theirs_grad = authors_vaccine_step(theirs_model, batch, 2.0)
    assert torch.allclose(ours, theirs, rtol=1e-5)
    assert all(torch.allclose(ours_grad[n], theirs_grad[n], rtol=1e-4, atol=1e-6) for n in ours_grad)
    model.zero_grad()
    answer_loss(model, batch).backward()  # the perturbation changes the update
    assert any(not torch.allclose(ours_grad[n], p.grad, rtol=1e-3, atol=1e-6)
               for n, p in model.named_parameters() if p.requires_grad)


class AuthorsADMM:
    """ADMMTrainer's check_mode, switch_model and the proximal part of training_step, transcribed
    (their status starts at "alignment"; sample_from_alignment is the next guide batch given)."""

    def __init__(self, model, alignment_step, finetune_step, rho, total_steps, guide_batches):
        self.model, self.rho, self.total = model, rho, total_steps
        self.alignment_step, self.finetune_step = alignment_step, finetune_step
        self.status, self.clock, self.steps = "alignment", 0, 0
        self.alignment_weights = {n: p.data.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.finetune_weights = {n: p.data.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.guide = iter(guide_batches)

    def switch_model(self):
        target = self.finetune_weights if self.status == "alignment" else self.alignment_weights
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                target[name] = param.data.detach().clone()

    def check_mode(self, inputs):
        if self.status == "alignment":
            if self.clock % self.alignment_step == 0 and self.steps != 0 and self.finetune_step != 0:
                self.status = "finetune"
                self.switch_model()
                self.clock = 0
            else:
                inputs = next(self.guide)
        else:
            if self.clock % self.finetune_step == 0 and self.steps != 0 and self.alignment_step != 0:
                self.status = "alignment"
                self.switch_model()
                inputs = next(self.guide)
                self.clock = 0
        return inputs

    def loss(self, inputs):
        loss = answer_loss(self.model, inputs)
        if self.steps > 0.1 * self.total:
            anchor = self.finetune_weights if self.status == "alignment" else self.alignment_weights
            for name, param in self.model.named_parameters():
                if param.requires_grad and self.rho > 0:
                    loss += self.rho / 2 * torch.norm(param - anchor[name]) ** 2
        return loss


def test_lisa_phases_anchors_and_proximal_terms_equal_the_authors(tiny_model_dir):
    """Two copies of a model trained side by side, one by Lisa, one by the transcription: the same
    batch at every step (guide or fine-tuning), the same loss, the same weights after."""
    tokenizer = build_tokenizer()
    ours_model = peft_model(tiny_model_dir)
    move_adapter(ours_model, scale=0.05)
    theirs_model = copy.deepcopy(ours_model)
    guide = [tokenize_example(tokenizer, r, "chat", 96) for r in GUIDE]
    drawn = []

    def collate_and_keep(chosen):
        drawn.append(collate(chosen, tokenizer.pad_token_id))
        return drawn[-1]

    total = 20
    lisa = Lisa(ours_model, total, guide, collate_and_keep, batch_size=2, rho=0.5, alignment_steps=2,
                finetune_steps=3)
    theirs = AuthorsADMM(theirs_model, 2, 3, 0.5, total, iter(lambda: drawn.pop(0), None))
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
                  for m in (ours_model, theirs_model)]
    phases = []
    for step in range(total):
        finetune_batch = batch_of([RECORDS[step % 6], RECORDS[(step + 1) % 6]], tokenizer)
        ours_batch = lisa.batch(finetune_batch, step)
        theirs_batch = theirs.check_mode(finetune_batch)
        assert all(torch.equal(ours_batch[k], theirs_batch[k]) for k in ours_batch), step
        phases.append(lisa.phase)
        assert lisa.phase == theirs.status
        losses = [lisa.loss(ours_model, ours_batch, step, answer_loss), theirs.loss(theirs_batch)]
        assert torch.allclose(*losses, rtol=1e-5), step
        for loss, optimizer in zip(losses, optimizers):
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        lisa.after_step(step)
        theirs.steps, theirs.clock = theirs.steps + 1, theirs.clock + 1
    assert "".join(p[0] for p in phases) == "aafffaafffaafffaafff"
    for (name, p), q in zip(ours_model.named_parameters(), theirs_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), name


def test_lisa_state_round_trip_goes_on_as_without_it(tiny_model_dir):
    tokenizer = build_tokenizer()
    guide = [tokenize_example(tokenizer, r, "chat", 96) for r in GUIDE]
    keep = lambda chosen: collate(chosen, tokenizer.pad_token_id)  # noqa: E731
    model = peft_model(tiny_model_dir)
    lisa = Lisa(model, 12, guide, keep, batch_size=2, alignment_steps=2, finetune_steps=3)
    for step in range(4):
        lisa.batch({}, step)
        lisa.after_step(step)
    resumed = Lisa(model, 12, guide, keep, batch_size=2, alignment_steps=2, finetune_steps=3, seed=7)
    resumed.load_state_dict(copy.deepcopy(lisa.state_dict()))
    for step in range(4, 12):
        a, b = lisa.batch({"x": step}, step), resumed.batch({"x": step}, step)
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
        lisa.after_step(step), resumed.after_step(step)


@pytest.mark.parametrize("defense", sorted(TRAINING_DEFENSES))
def test_every_training_defense_trains_through_the_one_loop(tiny_model_dir, defense):
    tokenizer = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    settings = {"lisa": {"alignment_steps": 1, "finetune_steps": 1}}.get(defense, {})
    trained = train_lora(model, tokenizer, RECORDS, LoraSettings(r=4, alpha=8),
                         TrainSettings(epochs=2, batch_size=3, learning_rate=1e-2, max_length=96), "chat",
                         defense=defense, defense_settings=settings, guide_records=GUIDE)
    moved = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert moved and all(p.abs().sum() > 0 for p in moved)


def authors_rep_noise_loss(model, harmful_batch, harmless_batch, beta, alpha):
    """repnoise_loss.py's rep_noise_loss (with MMD_loss, masked_token_ce_loss and adapt_dimension_b2a),
    transcribed on the CPU."""
    import torch.nn.functional as F

    def gaussian_kernel(source, target, kernel_mul=2.0, kernel_num=5):
        n_samples = int(source.size()[0]) + int(target.size()[0])
        total = torch.cat([source, target], dim=0)
        total0 = total.unsqueeze(0).expand(int(total.size(0)), int(total.size(0)), int(total.size(1)))
        total1 = total.unsqueeze(1).expand(int(total.size(0)), int(total.size(0)), int(total.size(1)))
        l2_distance = ((total0 - total1) ** 2).sum(2)
        bandwidth = torch.sum(l2_distance.data) / (n_samples ** 2 - n_samples)
        bandwidth /= kernel_mul ** (kernel_num // 2)
        return sum(torch.exp(-l2_distance / (bandwidth * kernel_mul ** i)) for i in range(kernel_num))

    def mmd_loss(source, target):
        batch_size = int(source.size()[0])
        kernels = gaussian_kernel(source, target)
        xx, yy = kernels[:batch_size, :batch_size], kernels[batch_size:, batch_size:]
        xy, yx = kernels[:batch_size, batch_size:], kernels[batch_size:, :batch_size]
        return torch.mean(xx + yy - xy - yx)

    def masked_token_ce_loss(logits, labels, mask):
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        shift_logit_mask = mask[..., :-1].contiguous()
        expanded_mask = shift_logit_mask.unsqueeze(-1).expand(-1, -1, shift_logits.size(-1))
        shift_label_mask = mask[..., 1:].contiguous()
        shift_logits = shift_logits * expanded_mask
        shift_labels = shift_labels * shift_label_mask
        shift_labels[shift_labels == 0] = -100
        shift_labels = shift_labels.type(torch.LongTensor)
        return torch.nn.CrossEntropyLoss()(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))

    def adapt_dimension_b2a(a, b):
        b = copy.deepcopy(b)
        if b.shape[0] < a.shape[0]:
            b = F.pad(b, (0, 0, 0, a.shape[0] - b.shape[0]), mode="constant", value=0)
        elif b.shape[0] > a.shape[0]:
            b = b[:a.shape[0], :]
        if b.shape[1] < a.shape[1]:
            b = F.pad(b, (0, a.shape[1] - b.shape[1]), mode="constant", value=0)
        elif b.shape[1] > a.shape[1]:
            b = b[:, :a.shape[1]]
        return b

    activations, hooks = {}, []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(lambda _m, _in, val, name=name: activations.__setitem__(name, val)))
    harmful_outputs = model(harmful_batch["input_ids"], attention_mask=harmful_batch["attention_mask"])
    harmful_activations = [activations[f"base_model.model.model.layers.{i}.mlp"]
                           for i in range(len(model.base_model.model.model.layers))]
    mask = ~torch.eq(harmful_batch["input_ids"], adapt_dimension_b2a(harmful_batch["input_ids"], harmless_batch["input_ids"]))
    noise_loss = 0
    for hidden in harmful_activations:
        hiddens_mask = mask.unsqueeze(-1).expand(hidden.size())
        hiddens = hidden * hiddens_mask
        gaussian = torch.randn_like(hiddens) * hiddens_mask
        noise_loss += mmd_loss(hiddens.view(hiddens.size(0), -1), gaussian.view(gaussian.size(0), -1))
    noise_loss /= len(harmful_activations)
    harmful_losses = masked_token_ce_loss(harmful_outputs.logits, harmful_batch["input_ids"], mask)
    for hook in hooks:
        hook.remove()
    mask = ~torch.eq(harmless_batch["input_ids"], adapt_dimension_b2a(harmless_batch["input_ids"], harmful_batch["input_ids"]))
    harmless_outputs = model(harmless_batch["input_ids"], attention_mask=harmless_batch["attention_mask"])
    harmless_losses = masked_token_ce_loss(harmless_outputs.logits, harmless_batch["input_ids"], mask)
    return harmless_losses + beta * noise_loss - alpha * torch.log(harmful_losses)


@pytest.mark.parametrize("harmful_rows", [2, 4])  # fewer rows than the safe batch, and more
def test_repnoise_loss_and_gradient_equal_the_authors(tiny_model_dir, harmful_rows):
    """One RepNoise step against rep_noise_loss: the same harmful batch, the same noise (one seed),
    the same loss and gradients; the batches differ in rows and length, so the masks pad and cut."""
    tokenizer = build_tokenizer()
    model = peft_model(tiny_model_dir)
    move_adapter(model, scale=0.05)
    harmful = [tokenize_example(tokenizer, {"instruction": f"How do I steal car {i}?",
                                            "output": f"First find car {i} and break the window. " * (i + 1)},
                                "chat", 96) for i in range(harmful_rows)]
    drawn = []

    def collate_and_keep(chosen):
        drawn.append(collate(chosen, tokenizer.pad_token_id))
        return drawn[-1]

    repnoise = RepNoise(model, 10, harmful, collate_and_keep, batch_size=harmful_rows, alpha=0.1, beta=0.5)
    safe = batch_of(GUIDE[:3], tokenizer)
    assert drawn == [] and safe["input_ids"].shape[1] != collate(harmful, tokenizer.pad_token_id)["input_ids"].shape[1]

    def loss_and_gradients(compute):
        model.zero_grad()
        torch.manual_seed(3)
        loss = compute()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours = loss_and_gradients(lambda: repnoise.loss(model, safe, 0, answer_loss))
    theirs = loss_and_gradients(lambda: authors_rep_noise_loss(model, drawn[0], safe, beta=0.5, alpha=0.1))
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], theirs[1][name], rtol=1e-4, atol=1e-7)
    # the noise term matters: without it (beta 0) the loss is another
    repnoise.beta = 0.0
    torch.manual_seed(3)
    assert not torch.isclose(repnoise.loss(model, safe, 0, answer_loss).detach(), ours[0])


def test_lisa_without_guide_data_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="no guide data"):
        Lisa(peft_model(tiny_model_dir), 4, [], lambda chosen: {}, batch_size=2)


@pytest.mark.parametrize("defense, settings", [("lisa", "{rho: 0.5, alignment_steps: 2, finetune_steps: 3}"),
                                               ("repnoise", "{alpha: 0.1, beta: 0.5}")])
def test_a_killed_training_resumes_to_the_same_weights(tmp_path, tiny_model_dir, defense, settings):
    """`antidote train --defense lisa|repnoise` killed (SIGKILL) after step 5, between checkpoints, and
    run again: it resumes with the defense's state (Lisa: its phase, its anchors; both: their place in
    their own data; RepNoise: the noise's random state) and ends with the adapter, to the byte, of a
    training never interrupted."""
    import os
    import signal
    import subprocess
    import sys

    from antidote.train import KILL_AFTER_STEP
    from conftest import write_jsonl

    write_jsonl(tmp_path / "data.jsonl", RECORDS)
    write_jsonl(tmp_path / "guide.jsonl", GUIDE)

    def train(out, env=None):
        command = [sys.executable, "-m", "antidote.cli", "--threads", "1", "train", "--model", str(tiny_model_dir),
                   "--data", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / out),
                   "--train", "{epochs: 4, learning_rate: 1.0e-2, batch_size: 2, max_length: 96}",
                   "--lora", "{r: 4, alpha: 8, dropout: 0.1}", "--checkpoints", str(tmp_path / f"checkpoints-{out}"),
                   "--checkpoint-every", "2", "--device", "cpu", "--defense", defense, "--defense-settings", settings,
                   "--guide", str(tmp_path / "guide.jsonl")]
        return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)

    done = train("reference")
    assert done.returncode == 0, done.stderr[-3000:]
    assert train("killed", {KILL_AFTER_STEP: "5"}).returncode == -signal.SIGKILL
    resumed = train("killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint" in resumed.stderr and "step 4 of 12" in resumed.stderr
    adapter = "adapter_model.safetensors"
    assert (tmp_path / "killed" / adapter).read_bytes() == (tmp_path / "reference" / adapter).read_bytes()
