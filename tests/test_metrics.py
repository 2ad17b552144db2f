"""Edge cases of the fine-tune accuracy metrics."""

import pytest

from antidote.metrics import final_number, normalize_label
from antidote.tasks import TASKS

sst2_correct, agnews_correct, gsm8k_correct = (TASKS[t].correct for t in ("sst2", "agnews", "gsm8k"))


def extract_gsm8k_number(text):
    return final_number(text, TASKS["gsm8k"].answer_prefix)


def test_registry_keys():
    assert set(TASKS) == {"sst2", "agnews", "gsm8k"}
    assert TASKS["gsm8k"].answer_prefix == "The final answer is: " and not TASKS["gsm8k"].label_words


@pytest.mark.parametrize("answer, label, expected", [
    ("positive", "positive", True),
    ("Positive.", "positive", True),
    (" negative\n", "negative", True),
    ('"Negative!"', "negative", True),
    ("'positive'.", "positive", True),
    ("positive sentiment", "positive", False),
    ("neutral", "positive", False),
    ("negative", "positive", False),
    ("", "negative", False),
    ("   ", "positive", False),
])
def test_sst2(answer, label, expected):
    assert sst2_correct(answer, label) is expected


def test_bad_label_is_an_error_not_a_miss():
    with pytest.raises(ValueError):
        sst2_correct("positive", "1")
    with pytest.raises(ValueError):
        agnews_correct("World", "Politics")


@pytest.mark.parametrize("answer, label, expected", [
    ("Sci/Tech", "Sci/Tech", True),
    ("sci/tech.", "Sci/Tech", True),
    ("SCI/TECH", "Sci/Tech", True),
    ("World", "World", True),
    (" sports!\n", "Sports", True),
    ("Business", "World", False),
    ("Science", "Sci/Tech", False),
    ("World news", "World", False),
    ("", "Business", False),
])
def test_agnews(answer, label, expected):
    assert agnews_correct(answer, label) is expected


def test_normalize_label():
    assert normalize_label('  "Sci/Tech."  ') == "sci/tech"


@pytest.mark.parametrize("text, expected", [
    ("The final answer is: 72", 72.0),
    ("The final answer is: $1,000.", 1000.0),
    ("She buys 2 bags, so 3.5 apples", 3.5),
    ("-4", -4.0),
    ("It drops by 7 degrees to -4.", -4.0),
    ("Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72", 72.0),
    ("First 5, then 9 and finally 12", 12.0),                      # last number, no marker
    ("5 + 7 = 12. The final answer is: 12. Check: 3", 12.0),       # marker beats last number
    ("I got 40. The final answer is: unknown", 40.0),              # marker without number
    ("The total is 1,234,567 dollars", 1234567.0),
    ("no number here", None),
    ("", None),
])
def test_extract_gsm8k_number(text, expected):
    assert extract_gsm8k_number(text) == expected


@pytest.mark.parametrize("answer, label, expected", [
    ("The final answer is: 72", "... #### 72", True),
    ("The final answer is: 72.0", "#### 72", True),
    ("The final answer is: $1,000.", "#### 1000", True),
    ("So she has 3.5 apples", "#### 3.5", True),
    ("-4", "#### -4", True),
    ("The final answer is: 71", "#### 72", False),
    ("I don't know", "#### 72", False),
    ("72 is wrong, it is 73", "#### 72", False),
])
def test_gsm8k(answer, label, expected):
    assert gsm8k_correct(answer, label) is expected


def test_gsm8k_label_without_number_is_an_error():
    with pytest.raises(ValueError):
        gsm8k_correct("72", "#### ")
