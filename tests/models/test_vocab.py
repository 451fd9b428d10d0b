from models.vocab import SPECIALS, Vocabulary, tokenize


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("A Dog's ball, RED!") == ["a", "dog's", "ball", ",", "red", "!"]
    assert tokenize("  ") == []


def test_vocabulary_min_count_order_and_unknown_words():
    vocab = Vocabulary.build(["a red circle", "a blue circle", "a red square ."], min_count=2)
    assert vocab.words[: len(SPECIALS)] == list(SPECIALS)
    assert vocab.words[len(SPECIALS):] == ["a", "circle", "red"]  # by count, then alphabetically
    assert "red" in vocab and "RED" in vocab and "blue" not in vocab and "<unk>" not in vocab
    assert vocab.encode("a blue circle") == [vocab.index["a"], 1, vocab.index["circle"]]
    assert vocab.unknown_words("a blue circle, zebra!") == ["blue", "zebra"]
    assert vocab.decode(vocab.encode("a red circle", add_bounds=True)) == "a red circle"


def test_batch_pads_and_keeps_lengths():
    vocab = Vocabulary.build(["a red circle"])
    tokens, lengths = vocab.batch(["a red circle", "", "red"], max_length=2)
    assert tokens.shape == (3, 2) and lengths.tolist() == [2, 1, 1]
    assert tokens[1].tolist() == [1, 0]  # an empty text becomes one <unk>, then padding
    assert Vocabulary(vocab.words).words == vocab.words
