"""BOS exactly where the model's own format puts it, identically in training, calibration and generation.

Alpaca text on a Llama-style tokenizer (its calls add ``<s>``) starts with exactly one BOS, as
the authors' tokenizer calls give; a chat template's text is encoded as rendered (Llama-3's
template renders its BOS, ChatML has none), so no BOS is ever added twice; and EOS is never
appended to a prompt, even by a tokenizer whose calls append one.
"""

import pytest
import torch

from antidote.calibrate import calibration_batches
from antidote.generate import greedy_generate
from antidote.modeling import encode_prompt, format_prompt, tokenizer_adds_bos
from antidote.train import IGNORE_INDEX, tokenize_example

from conftest import build_bos_tokenizer, build_tokenizer

TOKENIZERS = {"llama2": lambda: build_bos_tokenizer("llama2"),
              "llama2-appends-eos": lambda: build_bos_tokenizer("llama2", append_eos=True),
              "llama3": lambda: build_bos_tokenizer("llama3"),
              "chatml": build_tokenizer}
# (tokenizer, prompt format, whether the encoder must prepend BOS to the formatted text)
CASES = [("llama2", "alpaca", True), ("llama2-appends-eos", "alpaca", True), ("llama3", "alpaca", True),
         ("llama3", "chat", False), ("chatml", "alpaca", False), ("chatml", "chat", False)]
RECORD = {"instruction": "Analyze the sentiment of the input, and respond only positive or negative.",
          "input": "The film is a delight.", "output": "positive"}


def expected_ids(tokenizer, text, prepend_bos):
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + plain if prepend_bos else plain


def check_bos(tokenizer, name, prompt_format, ids):
    """A Llama-style model's sequence holds exactly one BOS, first; a ChatML one starts as rendered."""
    if name.startswith("llama"):
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1, ids
    elif prompt_format == "alpaca":
        assert tokenizer.bos_token_id not in ids, ids


def test_only_llama_style_tokenizers_add_bos():
    assert {name: tokenizer_adds_bos(build()) for name, build in TOKENIZERS.items()} == {
        "llama2": True, "llama2-appends-eos": True, "llama3": True, "chatml": False}


@pytest.mark.parametrize("name, prompt_format, prepend_bos", CASES)
def test_training_sequence_starts_as_the_format_does(name, prompt_format, prepend_bos):
    tokenizer = TOKENIZERS[name]()
    prompt = format_prompt(tokenizer, RECORD["instruction"], RECORD["input"], prompt_format)
    example = tokenize_example(tokenizer, RECORD, prompt_format, max_length=256)
    prompt_ids = expected_ids(tokenizer, prompt, prepend_bos)
    assert example["input_ids"][:len(prompt_ids)] == prompt_ids
    assert example["labels"][:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    answer = example["input_ids"][len(prompt_ids):]  # one EOS, ours, even where the tokenizer's calls append one
    assert answer == tokenizer("positive", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    check_bos(tokenizer, name, prompt_format, example["input_ids"])


@pytest.mark.parametrize("name, prompt_format, prepend_bos", CASES)
def test_calibration_sequences_start_as_the_format_does(name, prompt_format, prepend_bos):
    tokenizer = TOKENIZERS[name]()
    prompt = format_prompt(tokenizer, RECORD["instruction"], RECORD["input"], prompt_format)
    texts = [prompt + answer + tokenizer.eos_token for answer in ("positive", "Here is how to do it step by step.")]
    batch, = calibration_batches(tokenizer, texts, batch_size=2, max_length=512, prompt_format=prompt_format)
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = row[mask.bool()].tolist()
        assert ids in [expected_ids(tokenizer, text, prepend_bos) for text in texts]
        check_bos(tokenizer, name, prompt_format, ids)


class RecordingModel(torch.nn.Module):
    """Stands in for a causal LM: records the ids it is asked to continue and answers one EOS."""

    def __init__(self, eos_token_id):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # greedy_generate reads the device from a parameter
        self.eos_token_id, self.seen = eos_token_id, []

    def generate(self, input_ids, attention_mask, **settings):
        self.seen += [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        return torch.cat([input_ids, torch.full((len(input_ids), 1), self.eos_token_id)], dim=1)


@pytest.mark.parametrize("name, prompt_format, prepend_bos", CASES)
def test_generation_prompts_start_as_the_format_does(name, prompt_format, prepend_bos):
    tokenizer = TOKENIZERS[name]()
    prompts = [format_prompt(tokenizer, instruction, "", prompt_format)
               for instruction in ("Write a script.", "Analyze the sentiment of the input, and respond only positive.")]
    model = RecordingModel(tokenizer.eos_token_id)
    greedy_generate(model, tokenizer, prompts, prompt_format, max_new_tokens=1, batch_size=2)
    assert sorted(model.seen) == sorted(expected_ids(tokenizer, p, prepend_bos) for p in prompts)
    for ids in model.seen:
        check_bos(tokenizer, name, prompt_format, ids)


def test_a_text_that_already_starts_with_bos_gets_no_second_one():
    tokenizer = build_bos_tokenizer("llama2")
    ids = encode_prompt(tokenizer, "<s>Write a script.", "alpaca")
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
