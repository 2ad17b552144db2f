"""Training: the answer-only loss equals the library's full loss, prompts are masked, loss goes down."""

import random

import torch

from antidote.train import (IGNORE_INDEX, LoraSettings, TrainSettings, answer_loss, collate,
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
