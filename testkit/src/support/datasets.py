"""Small labelled text data sets written as JSONL, for end-to-end runs."""

import json
import random
from pathlib import Path

POSITIVE = ["wonderful", "moving", "brilliant", "funny", "gripping", "lovely", "superb", "charming"]
NEGATIVE = ["dull", "clumsy", "boring", "tedious", "awful", "bland", "messy", "lifeless"]
NOUNS = ["film", "story", "cast", "script", "ending", "score", "pacing", "direction"]


def write_reviews(path: Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` short reviews with string labels ``positive``/``negative`` (balanced)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for index in range(rows):
            positive = index % 2 == 0
            word = rng.choice(POSITIVE if positive else NEGATIVE)
            sentence = f"the {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} felt {word}"
            label = "positive" if positive else "negative"
            handle.write(json.dumps({"sentence": sentence, "label": label}) + "\n")
    return path
