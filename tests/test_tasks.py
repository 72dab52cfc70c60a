"""Synthetic retrieval tasks: exact lengths, needle depth, tokenization and answer matching."""

import random

import pytest
from transformers import AutoTokenizer

from cometlm.bundled import bundled_model_dir, encode
from cometlm.tasks.retrieval import (
    NEEDLE,
    NEEDLE_ANSWER,
    PASSKEY_FILLER,
    PASSKEY_INTRO,
    PASSKEY_QUESTION,
    needle_answer_matches,
    needle_sample,
    passkey_matches,
    passkey_sample,
    sentence_starts,
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_model_dir())


def longest_filler_sentence(tokenizer) -> int:
    return max(len(encode(tokenizer, " " + s)) for s in PASSKEY_FILLER)


@pytest.mark.parametrize("n_tokens", [120, 333, 1000, 4097])
@pytest.mark.parametrize("depth", [0.0, 0.13, 0.5, 0.99, 1.0])
def test_passkey_prompt_has_exactly_n_tokens(tokenizer, n_tokens, depth):
    sample = passkey_sample(tokenizer, n_tokens, depth, random.Random(n_tokens))
    assert len(sample.prompt_ids) == n_tokens
    assert sample.prompt_ids == sample.context_ids + sample.question_ids


def test_passkey_shortest_prompt(tokenizer):
    with pytest.raises(ValueError, match="too short for a passkey prompt; use at least") as error:
        passkey_sample(tokenizer, 20, 0.5, random.Random(0))
    shortest = int(str(error.value).rsplit(" ", 1)[1])
    for depth in (0.0, 0.5, 1.0):
        assert len(passkey_sample(tokenizer, shortest, depth, random.Random(0)).prompt_ids) == shortest
        assert len(passkey_sample(tokenizer, shortest + 1, depth, random.Random(0)).prompt_ids) == shortest + 1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_passkey_ids_equal_tokenizing_the_whole_prompt(tokenizer, seed, depth):
    sample = passkey_sample(tokenizer, 150 + 37 * seed, depth, random.Random(seed))
    text = tokenizer.decode(sample.prompt_ids)
    assert encode(tokenizer, text) == sample.prompt_ids
    assert text.startswith(PASSKEY_INTRO + "\n")
    assert text.endswith("\n" + PASSKEY_QUESTION)
    assert tokenizer.decode(sample.question_ids) == "\n" + PASSKEY_QUESTION
    needle = f"The pass key is {sample.answer}. Remember it. {sample.answer} is the pass key."
    assert tokenizer.decode(sample.context_ids[sample.needle_start :]).startswith(needle)
    assert text.count(sample.answer) == 2


def test_passkey_answer(tokenizer):
    sample = passkey_sample(tokenizer, 200, 0.5, random.Random(0))
    assert len(sample.answer) == 5 and sample.answer.isdigit() and sample.answer[0] != "0"
    assert sample.answer_ids == encode(tokenizer, " " + sample.answer)
    assert tokenizer.decode(sample.answer_ids) == " " + sample.answer
    short = passkey_sample(tokenizer, 200, 0.5, random.Random(0), key_digits=3)
    assert len(short.answer) == 3


def test_passkey_is_a_function_of_the_rng(tokenizer):
    a = passkey_sample(tokenizer, 300, 0.4, random.Random(7))
    assert passkey_sample(tokenizer, 300, 0.4, random.Random(7)) == a
    keys = {passkey_sample(tokenizer, 300, 0.4, random.Random(seed)).answer for seed in range(20)}
    assert len(keys) > 15


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_depth(tokenizer, depth):
    sample = passkey_sample(tokenizer, 2000, depth, random.Random(1))
    context = sample.context_ids
    needle_len = len(encode(tokenizer, f"The pass key is {sample.answer}. Remember it. {sample.answer} is the pass key."))
    intro_len = len(encode(tokenizer, PASSKEY_INTRO + "\n"))
    # The needle sits at the sentence boundary nearest `depth` of the filler; the intro and the needle
    # itself shift needle_start / len(context) by at most their length.
    tolerance = (intro_len + needle_len + longest_filler_sentence(tokenizer) + 2) / len(context)
    assert abs(sample.needle_start / len(context) - depth) <= tolerance
    if depth == 0.0:
        assert sample.needle_start == intro_len
    if depth == 1.0:
        assert sample.needle_start + needle_len == len(context)


def test_passkey_depth_on_a_long_context_is_precise(tokenizer):
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        sample = passkey_sample(tokenizer, 50_000, depth, random.Random(0))
        assert abs(sample.needle_start / len(sample.context_ids) - depth) < 2e-3


def test_passkey_needle_starts_on_a_sentence_boundary(tokenizer):
    for depth in (0.1, 0.33, 0.5, 0.77):
        sample = passkey_sample(tokenizer, 1000, depth, random.Random(0))
        before = tokenizer.decode(sample.context_ids[: sample.needle_start])
        assert before.endswith(".\n")


def test_passkey_of_a_million_tokens_is_exact(tokenizer):
    sample = passkey_sample(tokenizer, 1_000_000, 0.7, random.Random(0))
    assert len(sample.prompt_ids) == 1_000_000
    assert abs(sample.needle_start / len(sample.context_ids) - 0.7) < 1e-4


@pytest.mark.parametrize("n_tokens", [100, 777, 3000])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_prompt(tokenizer, n_tokens, depth):
    sample = needle_sample(tokenizer, n_tokens, depth, random.Random(n_tokens))
    context = sample.context_ids
    assert len(sample.prompt_ids) == n_tokens
    needle_ids = encode(tokenizer, " " + NEEDLE)
    assert context[sample.needle_start : sample.needle_start + len(needle_ids)] == needle_ids
    assert sample.answer == NEEDLE_ANSWER
    assert sample.answer_ids == encode(tokenizer, " " + NEEDLE_ANSWER)
    assert tokenizer.decode(sample.question_ids) == "\nWhat is the best thing to do in San Francisco? Answer:"
    if depth == 0.0:
        assert sample.needle_start == 0
    elif depth == 1.0:
        assert sample.needle_start + len(needle_ids) == len(context)
    else:
        # essay sentences are longer than filler ones; within 40 tokens of the requested depth here
        assert abs(sample.needle_start / len(context) - depth) < 40 / len(context) + 0.05
        assert tokenizer.decode(context[sample.needle_start - 1]).rstrip().endswith((".", "?", "!"))


def test_needle_haystack_starts_at_a_random_sentence_and_wraps(tokenizer):
    a = needle_sample(tokenizer, 500, 0.5, random.Random(1))
    assert needle_sample(tokenizer, 500, 0.5, random.Random(1)) == a
    assert needle_sample(tokenizer, 500, 0.5, random.Random(2)).context_ids != a.context_ids
    longer_than_the_essays = needle_sample(tokenizer, 300_000, 0.5, random.Random(3))
    assert len(longer_than_the_essays.prompt_ids) == 300_000


@pytest.mark.parametrize("build", [passkey_sample, needle_sample])
def test_depth_outside_0_1_is_refused(tokenizer, build):
    with pytest.raises(ValueError, match=r"depth must lie in \[0, 1\]"):
        build(tokenizer, 500, 1.5, random.Random(0))


def test_passkey_matches():
    assert passkey_matches(" 48213.", "48213")
    assert passkey_matches("The pass key is 48213. Remember it.", "48213")
    assert passkey_matches("48213", " 48213")
    assert not passkey_matches(" 482139", "48213")
    assert not passkey_matches(" 4821", "48213")
    assert not passkey_matches(" 12345, no, 48213", "48213")
    assert not passkey_matches("I do not know.", "48213")


def test_needle_answer_matches():
    assert needle_answer_matches(" eat a sandwich and sit in Dolores Park on a sunny day.")
    assert needle_answer_matches("Eat a SANDWICH in dolores park")
    assert not needle_answer_matches("eat a sandwich")
    assert not needle_answer_matches("sit in Dolores Park")


def test_sentence_starts(tokenizer):
    ids = encode(tokenizer, "One two. Three four? Five\nsix! Seven e.g. eight")
    words = lambda starts: [tokenizer.decode(ids[i:]).split()[0] for i in starts]  # noqa: E731
    # "e.g." yields a false sentence start, as documented
    assert words(sentence_starts(tokenizer, ids)) == ["Three", "Five", "six!", "Seven", "g.", "eight"]
    assert words(sentence_starts(tokenizer, ids, line_breaks=False)) == ["Three", "Five", "Seven", "g.", "eight"]
    assert sentence_starts(tokenizer, []) == [] and sentence_starts(tokenizer, encode(tokenizer, "End.")) == []
