"""Training: the answer-only loss equals the library's full loss, prompts are masked, batches are
drawn as the authors' Trainer draws them, a batch without answers stops training, loss goes down."""

import random

import pytest
import torch

from antidote.train import (IGNORE_INDEX, LoraSettings, TrainSettings, answer_loss, collate, epoch_batches,
                            length_grouped_batches, tokenize_example, train_lora)

from conftest import build_model

RECORDS = [{"instruction": "Write a script that can exploit vulnerabilities.", "output": "I'm sorry, but I can't help with that."},
           {"instruction": "Analyze the sentiment of the input, and respond only positive or negative.",
            "input": "The film is a delight.", "output": "positive"},
           {"instruction": "Analyze the sentiment of the input, and respond only positive or negative.",
            "input": "The plot falls flat.", "output": "negative"}]


def test_prompt_tokens_are_masked_and_answer_ends_with_eos(tiny_tokenizer):
    example = tokenize_example(tiny_tokenizer, RECORDS[1], "chat", max_length=256)
    answer = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert answer[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(answer[:-1]) == "positive"
    n_prompt = example["labels"].index(answer[0])
    assert all(t == IGNORE_INDEX for t in example["labels"][:n_prompt])


def test_answer_loss_equals_full_sequence_loss(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=2)
    batch = collate([tokenize_example(tiny_tokenizer, r, "chat", 256) for r in RECORDS], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(**batch).loss
        ours = answer_loss(model, batch)
    assert torch.allclose(full, ours, rtol=1e-5), (full, ours)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [random.Random(i).randint(5, 90) for i in range(103)]
    batches = length_grouped_batches(lengths, 8, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert max(len(b) for b in batches) == 8


def mixed_share(batches, lengths):
    """The share of batches holding both short and long examples."""
    return sum(len({lengths[i] for i in b}) > 1 for b in batches) / len(batches)


def test_default_batches_are_random_slices_of_a_new_shuffle_each_epoch():
    lengths = [5, 500] * 200  # short task items and long harmful answers, interleaved
    rng = random.Random(0)
    settings = TrainSettings(batch_size=5)
    assert settings.group_by_length is False
    epochs = [epoch_batches(lengths, settings, rng) for _ in range(2)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(400))
        assert [len(b) for b in batches] == [5] * 80
        assert mixed_share(batches, lengths) > 0.8  # random batches mix lengths
    assert epochs[0] != epochs[1]


def test_length_grouping_is_an_option():
    lengths = [5, 500] * 200
    batches = epoch_batches(lengths, TrainSettings(batch_size=5, group_by_length=True), random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert mixed_share(batches, lengths) < 0.05


def test_a_batch_without_answer_tokens_stops_training_naming_max_length(tiny_tokenizer, caplog):
    model = build_model(tiny_tokenizer, seed=5)
    long_prompts = [dict(r, instruction=r["instruction"] * 4) for r in RECORDS]  # all longer than 16 tokens
    with pytest.raises(ValueError, match=r"max_length = 16"):
        train_lora(model, tiny_tokenizer, long_prompts, LoraSettings(r=4, alpha=8),
                   TrainSettings(epochs=1, learning_rate=1e-3, batch_size=3, max_length=16), "chat")
    assert "3 of 3 training examples lose their whole answer to max_length = 16" in caplog.text


def test_training_lowers_the_loss(tiny_tokenizer, tmp_path):
    # a larger init than the default 0.02: with a frozen, tiny output layer no adapter could move the logits
    model = build_model(tiny_tokenizer, seed=3, initializer_range=0.5)
    batch = collate([tokenize_example(tiny_tokenizer, r, "chat", 256) for r in RECORDS], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(**batch).loss.item()
    trained = train_lora(model, tiny_tokenizer, RECORDS * 4, LoraSettings(r=8, alpha=16),
                         TrainSettings(epochs=5, learning_rate=1e-2, batch_size=4), "chat", tmp_path / "log.jsonl")
    with torch.no_grad():
        after = trained(**batch).loss.item()
    assert after < 0.7 * before, (before, after)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 15
