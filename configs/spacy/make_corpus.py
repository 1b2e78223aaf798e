"""Write a small part-of-speech corpus in spaCy's `.spacy` format (seeded).

The sentences come from a toy English grammar (noun phrase, verb phrase,
optional prepositional phrase). Some words are both nouns and verbs ("run",
"watch", "fish"), so a tagger must use the context as well as the word. No
download: everything is generated here, with `spacy.blank("en")`'s vocabulary.

    python configs/spacy/make_corpus.py runs/spacy/corpus --seed 0

writes `train.spacy` and `dev.spacy` into the folder.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

WORDS = {
    "DT": ["the", "a", "this", "that", "every", "some", "no", "each"],
    "JJ": ["small", "red", "quiet", "old", "bright", "heavy", "young", "green",
           "slow", "strange", "happy", "cold"],
    "NN": ["dog", "river", "teacher", "car", "garden", "window", "letter", "city",
           "bird", "table", "child", "song", "stone", "market"],
    "VBZ": ["sees", "finds", "likes", "follows", "carries", "opens", "paints",
            "hears", "moves", "keeps"],
    "IN": ["near", "under", "behind", "beside", "over", "with", "into"],
    "PRP": ["she", "he", "it", "they"],
    "RB": ["quickly", "often", "slowly", "again", "never", "today"],
}  # fmt: skip
# Words that are a noun or a verb depending on where they stand.
AMBIGUOUS = ["run", "watch", "fish", "light", "walk", "plant", "ring"]


def noun_phrase(rng: random.Random) -> list[tuple[str, str]]:
    """A determiner, up to two adjectives and a noun; or a pronoun."""
    if rng.random() < 0.15:
        return [(rng.choice(WORDS["PRP"]), "PRP")]
    words = [(rng.choice(WORDS["DT"]), "DT")]
    words += [(rng.choice(WORDS["JJ"]), "JJ") for _ in range(rng.randint(0, 2))]
    noun = rng.choice(AMBIGUOUS) if rng.random() < 0.25 else rng.choice(WORDS["NN"])
    return words + [(noun, "NN")]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """Noun phrase, verb (sometimes an ambiguous word), object, adverb,
    prepositional phrase, full stop: (word, tag) pairs."""
    words = noun_phrase(rng)
    if rng.random() < 0.3:
        words.append((rng.choice(AMBIGUOUS), "VB"))
    else:
        words.append((rng.choice(WORDS["VBZ"]), "VBZ"))
    if rng.random() < 0.7:
        words += noun_phrase(rng)
    if rng.random() < 0.3:
        words.append((rng.choice(WORDS["RB"]), "RB"))
    if rng.random() < 0.5:
        words.append((rng.choice(WORDS["IN"]), "IN"))
        words += noun_phrase(rng)
    return words + [(".", ".")]


def write_corpus(out: Path, *, seed: int = 0, n_train: int = 400, n_dev: int = 100):
    """Write `out/train.spacy` and `out/dev.spacy`; return their paths."""
    import spacy
    from spacy.tokens import Doc, DocBin

    nlp = spacy.blank("en")
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train", n_train), ("dev", n_dev)):
        docs = DocBin()
        for _ in range(n):
            pairs = sentence(rng)
            words = [w for w, _ in pairs]
            spaces = [nxt != "." for nxt in words[1:]] + [False]
            docs.add(
                Doc(nlp.vocab, words=words, spaces=spaces, tags=[t for _, t in pairs])
            )
        path = out / f"{name}.spacy"
        docs.to_disk(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for train.spacy and dev.spacy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-dev", type=int, default=100)
    args = parser.parse_args()
    for path in write_corpus(
        args.out, seed=args.seed, n_train=args.n_train, n_dev=args.n_dev
    ):
        print(path)


if __name__ == "__main__":
    main()
