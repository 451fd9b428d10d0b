"""BLEU-4 and CIDEr-D against values worked out by hand (GXN's caption quality and SCST reward)."""

from __future__ import annotations

import math

import pytest

from models.caption_metrics import CiderD, bleu, cider_d, words


def test_words_drop_punctuation_and_case():
    assert words("A dog, running!") == ["a", "dog", "running"]


def test_bleu_on_hand_worked_cases():
    assert bleu(["a dog runs on the grass"], [["a dog runs on the grass"]]) == pytest.approx(1.0)
    # c = 6, closest reference r = 7: BP = exp(1 - 7/6); precisions 6/6, 4/5, 3/4, 2/3.
    expected = math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert bleu(["a dog runs on the grass"], [["a dog runs on the green grass", "two cats"]]) == pytest.approx(expected)
    # Clipping: "the" twice but "cat" once in the reference; no 3-gram matches, so BLEU-4 is 0.
    assert bleu(["the cat the cat"], [["the cat is on the mat"]]) == 0.0
    with pytest.raises(ValueError, match="1 candidates but 2 reference sets"):
        bleu(["x"], [["x"], ["y"]])


CORPUS = [["a dog runs"], ["a cat sits"]]  # N = 2 images: idf = log 2 for n-grams of one image, 0 for "a"


def test_cider_d_exact_match_on_a_two_image_corpus():
    # n = 1..3: identical vectors (only "a" has idf 0), similarity 1; n = 4: no 4-grams, 0.
    assert CiderD(CORPUS).score("a dog runs", ["a dog runs"]) == pytest.approx(10 * (1 + 1 + 1 + 0) / 4)


def test_cider_d_partial_match_and_clipping():
    # n=1: {dog, sits} vs {dog, runs}: log²2 / (√2 log2 · √2 log2) = 1/2; n=2: {a dog, dog sits} vs
    # {a dog, dog runs}: 1/2; n=3: no shared trigram; n=4: none.
    assert CiderD(CORPUS).score("a dog sits", ["a dog runs"]) == pytest.approx(10 * (0.5 + 0.5) / 4)


def test_cider_d_length_penalty():
    # "a dog runs fast" vs "a dog runs": n=1 2/(√3·√2), n=2 2/(√3·√2), n=3 1/(√2·1), n=4 0, times
    # exp(-1/72) for one word of length difference (sigma 6).
    sims = 2 / math.sqrt(6) + 2 / math.sqrt(6) + 1 / math.sqrt(2)
    expected = 10 * sims / 4 * math.exp(-1 / 72)
    assert CiderD(CORPUS).score("a dog runs fast", ["a dog runs"]) == pytest.approx(expected)


def test_cider_d_averages_over_references_and_the_corpus():
    scorer = CiderD(CORPUS)
    two_refs = scorer.score("a dog runs", ["a dog runs", "a cat sits"])
    assert two_refs == pytest.approx((7.5 + scorer.score("a dog runs", ["a cat sits"])) / 2)
    assert list(scorer.scores(["a dog runs", "a cat sits"], CORPUS)) == pytest.approx([7.5, 7.5])
    assert cider_d(["a dog runs", "a cat sits"], CORPUS) == pytest.approx(7.5)
    assert scorer.score("", ["a dog runs"]) == 0.0


def test_cider_d_with_the_end_marker_punishes_a_dangling_ending():
    corpus = [["a dog runs on the grass"], ["a cat sits"]]
    plain, marked = CiderD(corpus), CiderD(corpus, mark_end=True)
    references = ["a dog runs on the grass"]
    # every n-gram of the prefix is in the reference, so without the marker only the length
    # penalty tells the cut caption from the whole one
    dangling, whole = "a dog runs on the", "a dog runs on the grass"
    assert marked.score(whole, references) == pytest.approx(10.0)  # every n-gram, the end's too, matches
    assert marked.document_frequency[("grass", "<end>")] == 1 and ("grass", "<end>") not in plain.document_frequency
    plain_ratio = plain.score(dangling, references) / plain.score(whole, references)
    marked_ratio = marked.score(dangling, references) / marked.score(whole, references)
    assert marked_ratio < plain_ratio - 0.05
    # the marker is not a word: captions are still only their words, and an empty one scores 0
    assert marked.score("", references) == 0.0
