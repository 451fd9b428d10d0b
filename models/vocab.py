"""Word-level vocabulary: lower-case, punctuation split off, rare words mapped to <unk>.

Words are normalised the same way in training and in queries, so that the obvious variants of a
word share its embedding: case is ignored, a hyphen separates words ("t-shirt" is "t shirt"), and
a word the vocabulary lacks is read as its singular ("squares" -> "square") or its other spelling
("grey" -> "gray", "colored" -> "coloured") when the vocabulary has that form. `build` merges the
variants found in the captions into the most common form; `readings` says which were applied.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_HYPHENATED = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")
_INNER_HYPHEN = re.compile(r"(?<=[a-z0-9])-(?=[a-z0-9])")

# British and American spellings people type interchangeably (either way round).
_SPELLINGS = {
    "grey": "gray", "greys": "grays", "greyish": "grayish", "colour": "color", "colours": "colors",
    "coloured": "colored", "colourful": "colorful", "centre": "center", "centres": "centers",
    "favourite": "favorite", "theatre": "theater", "metre": "meter", "neighbour": "neighbor",
    "harbour": "harbor", "jewellery": "jewelry", "pyjamas": "pajamas", "tyre": "tire", "tyres": "tires",
    "kerb": "curb", "aluminium": "aluminum", "moustache": "mustache", "armour": "armor", "doughnut": "donut",
    "plough": "plow", "cosy": "cozy", "mould": "mold", "catalogue": "catalog", "programme": "program",
    "travelling": "traveling", "traveller": "traveler", "odour": "odor", "flavour": "flavor",
    "honour": "honor", "behaviour": "behavior", "humour": "humor", "parlour": "parlor", "fibre": "fiber",
    "litre": "liter", "defence": "defense", "licence": "license", "ageing": "aging", "draught": "draft",
    "kilometre": "kilometer", "sombre": "somber", "skilful": "skillful", "woollen": "woolen",
    "jewelled": "jeweled", "bejewelled": "bejeweled", "storey": "story",
    "chequered": "checkered", "sulphur": "sulfur", "gaol": "jail", "tonne": "ton", "aeroplane": "airplane",
}
_OTHER_SPELLING = {**_SPELLINGS, **{american: british for british, american in _SPELLINGS.items()}}
_IRREGULAR_PLURALS = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
                      "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "knives": "knife",
                      "wives": "wife", "lives": "life", "leaves": "leaf", "wolves": "wolf", "shelves": "shelf",
                      "halves": "half", "calves": "calf", "loaves": "loaf", "scarves": "scarf"}
# Words that end like a plural but are not one, or whose "singular" means something else.
_NOT_PLURALS = {"news", "glasses", "sunglasses", "jeans", "shorts", "pants", "trousers", "overalls", "goggles",
                "scissors", "series", "species", "always", "perhaps", "towards", "upwards", "downwards",
                "afterwards", "sometimes", "besides", "whereas", "its", "his", "hers", "ours", "yours", "theirs",
                "this", "thus", "yes", "bus", "gas", "plus", "lens", "chess", "arms"}


@dataclass(frozen=True)
class Reading:
    """One normalisation applied to a query: `word` was read as `read_as` (`why`: plural, singular,
    spelling, hyphen)."""

    word: str
    read_as: str
    why: str

    def __str__(self) -> str:
        return f"{self.word!r} as {self.read_as!r} ({self.why})"


def tokenize(text: str) -> list[str]:
    """'A dog's T-shirt, red!' -> ['a', "dog's", 't', 'shirt', ',', 'red', '!']."""
    return _TOKEN.findall(_INNER_HYPHEN.sub(" ", text.lower()))


def singular_forms(word: str) -> list[str]:
    """Candidate singulars of `word`, most likely first ([] when it does not look plural)."""
    if word in _IRREGULAR_PLURALS:
        return [_IRREGULAR_PLURALS[word]]
    if len(word) <= 3 or word in _NOT_PLURALS or not word.endswith("s") or word.endswith(("ss", "us", "is", "ics")):
        return []
    if word.endswith("ies") and len(word) > 4:
        return [word[:-3] + "y", word[:-1]]
    if word.endswith("es"):
        return [word[:-2], word[:-1]]  # boxes -> box, horses -> horse
    return [word[:-1]]


def variants(word: str) -> list[tuple[str, str]]:
    """(form, why) the word may stand for, in the order they are tried."""
    found = []
    if word in _OTHER_SPELLING:
        found.append((_OTHER_SPELLING[word], "spelling"))
    for singular in singular_forms(word):
        found.append((singular, "plural"))
        if singular in _OTHER_SPELLING:
            found.append((_OTHER_SPELLING[singular], "plural, spelling"))
    if not singular_forms(word):  # a singular the vocabulary may only know in the plural
        found += [(plural, "singular") for plural in (word + "s", word + "es") if plural not in _NOT_PLURALS]
    return found


class Vocabulary:
    """A fixed word list; index 0 is padding and 1 is the unknown word."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Words seen at least `min_count` times in `captions`, most frequent first; a plural whose
        singular also occurs counts as the singular, and of two spellings the commoner one stays."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        merged: Counter[str] = Counter()
        for word, count in counts.items():
            merged[_canonical(word, counts)] += count
        frequent = [w for w, c in sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
        if max_size is not None:
            frequent = frequent[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *[w for w in frequent if w not in SPECIALS]])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return self.lookup(word.lower()) is not None

    def lookup(self, token: str) -> int | None:
        """The id of `token` or of the first variant of it the vocabulary has; None if neither."""
        found = self.index.get(token)
        if found is not None:
            return found if token not in SPECIALS else None
        for form, _ in variants(token):
            if form in self.index:
                return self.index[form]
        return None

    def encode(self, text: str, add_bounds: bool = False) -> list[int]:
        ids = [self.lookup(token) or 1 for token in tokenize(text)]
        return [self.index[START], *ids, self.index[END]] if add_bounds else ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[i] for i in ids if self.words[i] not in SPECIALS)

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` this vocabulary maps to <unk> (punctuation ignored)."""
        return [t for t in tokenize(text) if self.lookup(t) is None and any(ch.isalnum() for ch in t)]

    def readings(self, text: str) -> list[Reading]:
        """The normalisations `encode` applies to `text`, beyond lower-casing, in order."""
        found = [Reading(word, word.replace("-", " "), "hyphen") for word in _HYPHENATED.findall(text.lower())]
        for token in tokenize(text):
            if token in self.index:
                continue
            form, why = next(((f, w) for f, w in variants(token) if f in self.index), (None, None))
            if form is not None:
                found.append(Reading(token, form, why))
        return found

    def batch(self, texts: Sequence[str], max_length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token ids (B x T) and true lengths (>= 1: an empty text becomes one <unk>)."""
        encoded = [(self.encode(t)[:max_length] or [1]) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        tokens = torch.zeros(len(encoded), int(lengths.max()) if encoded else 1, dtype=torch.long)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens, lengths


def _canonical(word: str, counts: Counter[str]) -> str:
    """The form `word` is counted under when building: its singular if that occurs, then the
    commoner of its two spellings (the American one on a tie)."""
    for singular in singular_forms(word):
        if singular in counts:
            word = singular
            break
    other = _SPELLINGS.get(word) or _OTHER_SPELLING.get(word)
    if other is not None and other in counts:
        american = _SPELLINGS.get(word, word)
        ranked = sorted((word, other), key=lambda w: (-counts[w], w != american))
        word = ranked[0]
    return word
