"""Fine-tune accuracy (FA): did the model's answer match the task label?

Two kinds of metric, each ``(answer, label) -> bool``: exact match of a label word
(classification) and equality of the final number (arithmetic). Which task uses which, with
which label words or answer prefix, is written in :mod:`antidote.tasks`. The rules follow the
authors' evaluation scripts, made slightly more forgiving about formatting noise (case,
whitespace, quotes, a trailing full stop) that says nothing about whether the model solved the task.
"""

from __future__ import annotations

import re

_EDGE_CHARS = " \t\r\n\"'`“”‘’"
_TRAILING_PUNCT = ".!?,;:"
# A number: optional minus, digits with optional thousands commas, optional decimals.
# "$1,000." -> "1,000"; the trailing full stop is not taken as a decimal point.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_label(text: str) -> str:
    """Lowercase ``text`` without surrounding whitespace/quotes and trailing punctuation.

    ``' "Positive." \\n'`` -> ``"positive"``. Only the edges are touched, so an answer with
    extra words ("positive sentiment") still fails exact match, as in the authors' code.
    """
    text = text.strip(_EDGE_CHARS).rstrip(_TRAILING_PUNCT).strip(_EDGE_CHARS)
    return text.lower()


def label_match(answer: str, label: str, label_words: tuple[str, ...]) -> bool:
    """Exact match of the label word after :func:`normalize_label` on both sides (so any case)."""
    gold = normalize_label(label)
    if gold not in {normalize_label(word) for word in label_words}:  # a data bug (e.g. a class id), not a wrong answer
        raise ValueError(f"label {label!r} is not one of {label_words}")
    return normalize_label(answer) == gold


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def final_number(text: str, answer_prefix: str) -> float | None:
    """The first number after ``answer_prefix``, else the last number in ``text``.

    As in the authors' script, a prefix followed by no number falls back to the last number.
    Also parses GSM8K labels ("... #### 72"), whose final number is the answer. Thousands
    commas, a leading "$", a minus sign, decimals and a trailing full stop are handled.
    Returns ``None`` when ``text`` holds no number.
    """
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    _, prefix, after = text.partition(answer_prefix)
    if prefix:
        after_numbers = _NUMBER.findall(after)
        if after_numbers:
            return _to_float(after_numbers[0])
    return _to_float(numbers[-1])


def number_match(answer: str, label: str, answer_prefix: str) -> bool:
    """Float equality of the answer's number and the label's number (``72.0 == 72``)."""
    gold = final_number(label, answer_prefix)
    if gold is None:
        raise ValueError(f"label holds no number: {label!r}")
    predicted = final_number(answer, answer_prefix)
    return predicted is not None and predicted == gold
