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


def test_plurals_spellings_and_hyphens_share_one_word_in_training_and_queries():
    vocab = Vocabulary.build(["a red square", "two red squares", "a grey dog", "a gray cat", "a gray cat",
                              "a blue t-shirt", "the boxes", "a box", "the news"])
    # Built: plurals merge into their singular, the commoner spelling stays, hyphens separate.
    assert "squares" not in vocab.words and "grey" not in vocab.words and "-" not in vocab.words
    assert {"square", "gray", "box", "news", "t", "shirt"} <= set(vocab.words)
    # Queried: the same variants are read as the word the vocabulary has.
    assert vocab.encode("two blue squares") == vocab.encode("two blue square")
    assert vocab.encode("Grey T-Shirts") == vocab.encode("gray t shirt")
    assert vocab.unknown_words("grey squares, colour zebras") == ["colour", "zebras"]
    assert [str(r) for r in vocab.readings("grey T-shirts")] == [
        "'t-shirts' as 't shirts' (hyphen)", "'grey' as 'gray' (spelling)", "'shirts' as 'shirt' (plural)"]
    assert vocab.readings("a gray square") == []


def test_an_old_vocabulary_reads_unknown_variants_without_changing_known_words():
    vocab = Vocabulary([*SPECIALS, "a", "grey", "circles", "colour", "glass"])  # built before normalising
    assert vocab.encode("a gray circle") == [vocab.index[w] for w in ("a", "grey", "circles")]
    assert vocab.encode("colors") == [vocab.index["colour"]]
    assert vocab.encode("glasses") == [1]  # not the plural of glass
    assert vocab.encode("circles") == [vocab.index["circles"]]
