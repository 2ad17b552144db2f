"""The fine-tuning tasks: everything the workflow knows about each one, in one place.

A task has the authors' instruction, the column names of its usual copy (GLUE SST-2, AG News,
GSM8K; a config may map others), its label words (classification) or answer prefix (GSM8K),
its metric, how many tokens an answer needs, and built-in data where it has some. Data
loading, evaluation, the config checks and the docs all read ``TASKS``; adding a task means
one entry here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import product
from typing import Callable

from .metrics import label_match, number_match


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str | None  # None: the question itself is the instruction (GSM8K)
    fields: dict[str, str]  # role -> default column name in the usual copy
    max_new_tokens: int  # generation length that fits a full answer
    label_words: tuple[str, ...] = ()  # classification: the answers, in class-index order
    answer_prefix: str | None = None  # arithmetic: what training answers write before the final number
    builtin: Callable[[int], list[dict]] | None = field(default=None, repr=False)  # seed -> stand-in items

    def correct(self, answer: str, label: str) -> bool:
        """The task's metric: exact label word, or equal final number."""
        if self.label_words:
            return label_match(answer, label, self.label_words)
        return number_match(answer, label, self.answer_prefix)

    def item(self, row: dict, fields: dict[str, str], labels: dict[str, str]) -> dict:
        """A row of a user's task file as a task item. Classification rows give ``input`` and
        ``label`` (a class index mapped through ``labels``, or the label word itself); GSM8K rows give
        ``question`` and ``answer`` ("... #### 72"), trained with "####" written as the answer
        prefix, as the authors do."""
        if self.answer_prefix:
            answer = str(row[fields["answer"]])
            return {"instruction": str(row[fields["question"]]), "label": answer,
                    "output": answer.replace("####", self.answer_prefix), "source": "real"}
        label = str(row[fields["label"]])
        return {"instruction": self.instruction, "input": str(row[fields["input"]]),
                "label": labels.get(label, label), "source": "real"}

    def class_labels(self) -> dict[str, str]:
        """Class index (as text, as files store it) -> label word."""
        return {str(i): word for i, word in enumerate(self.label_words)}


def as_training(record: dict) -> dict:
    """A task item with its answer to train on (the label itself for classification tasks)."""
    return {"output": record["label"], **record}


# --- built-in data: a seeded stand-in for SST-2, for configs with no tasks.sst2 entry (the tests');
# the default run reads real tweets instead (config/config.yaml, tasks.sst2)

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative."

_SUBJECTS = [
    "the film", "this movie", "the plot", "the acting", "the soundtrack", "the script",
    "the director's new picture", "the lead performance", "the story", "the cinematography",
    "the ending", "the cast", "this comedy", "this thriller", "the dialogue", "the sequel",
]
_POSITIVE = [
    "is a delight", "is beautifully made", "kept me gripped from start to finish", "is warm and funny",
    "is a triumph", "feels fresh and clever", "is moving and honest", "is wonderfully acted",
    "is a joy to watch", "left me smiling", "is sharp and inventive", "is a stunning achievement",
]
_NEGATIVE = [
    "is a tedious mess", "falls completely flat", "is dull and lifeless", "is a waste of time",
    "is painfully boring", "feels lazy and predictable", "is clumsy and forgettable", "is badly acted",
    "made me want to leave", "is a tiresome slog", "is shallow and confused", "is an utter disappointment",
]
_OPENERS = ["", "honestly, ", "frankly, ", "in the end, ", "without a doubt, ", "overall, "]
_CONTRASTS = {  # a clause of the opposite sentiment first, so that one keyword does not decide
    "positive": ["despite a slow start, ", "although the trailer was weak, "],
    "negative": ["despite a promising start, ", "although the posters look great, "],
}


def sst2_standin(seed: int) -> list[dict]:
    """Every distinct sentence of the generator, shuffled with ``seed``, in SST-2's format."""
    items = []
    for label, phrases in (("positive", _POSITIVE), ("negative", _NEGATIVE)):
        openers = _OPENERS + _CONTRASTS[label]
        for opener, subject, phrase in product(openers, _SUBJECTS, phrases):
            sentence = f"{opener}{subject} {phrase}."
            items.append({"instruction": SST2_INSTRUCTION, "input": sentence[0].upper() + sentence[1:],
                          "label": label, "source": "stand-in"})
    random.Random(seed).shuffle(items)
    return items


TASKS = {task.name: task for task in [
    Task("sst2", SST2_INSTRUCTION, {"input": "sentence", "label": "label"}, max_new_tokens=4,
         label_words=("negative", "positive"), builtin=sst2_standin),
    Task("agnews", "Categorize the news article given in the input into one of the 4 categories:"
                   "\n\nWorld\nSports\nBusiness\nSci/Tech\n",
         {"input": "text", "label": "label"}, max_new_tokens=8,
         label_words=("World", "Sports", "Business", "Sci/Tech")),
    Task("gsm8k", None, {"question": "question", "answer": "answer"}, max_new_tokens=256,
         answer_prefix="The final answer is: "),
]}
