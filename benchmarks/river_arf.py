"""River's adaptive random forest, prequential (test, then train) on a stream, in a virtualenv of its
own (river 0.26 needs numpy 2; lakeloop's alibi-detect pins numpy < 2). Standard library only here.

    <venv>/bin/python benchmarks/river_arf.py STREAM.jsonl HELDOUT.jsonl LABEL CHECKPOINTS > RESULT.json

Each stream line is a row (features and the label); CHECKPOINTS are row counts after the first
`offset` rows (given as `offset:500,1000,...`) at which the forest's accuracy on the held-out rows is
measured. Prints {"prequential": accuracy over the rows after the offset, "heldout": {checkpoint: accuracy}}.
"""

from __future__ import annotations

import json
import sys

from river import forest


def _features(row: dict, label: str) -> dict:
    return {k: v for k, v in row.items() if k != label and v is not None}


def main(stream_path: str, heldout_path: str, label: str, checkpoints: str) -> None:
    offset_text, _, points_text = checkpoints.partition(":")
    offset, points = int(offset_text), [int(p) for p in points_text.split(",")]
    with open(stream_path) as lines:
        stream = [json.loads(line) for line in lines]
    with open(heldout_path) as lines:
        heldout = [json.loads(line) for line in lines]
    model = forest.ARFClassifier(seed=0)
    correct = seen = 0
    result: dict = {"heldout": {}}
    for index, row in enumerate(stream):
        x, y = _features(row, label), row[label]
        if index >= offset:
            correct += model.predict_one(x) == y
            seen += 1
        model.learn_one(x, y)
        if index + 1 - offset in points:
            hits = sum(model.predict_one(_features(r, label)) == r[label] for r in heldout)
            result["heldout"][str(index + 1 - offset)] = hits / len(heldout)
    result["prequential"] = correct / max(seen, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
