"""The model the loop learns after an abrupt concept change, against the best learners on the same
rows: new-concept accuracy (on 5,000 held-out rows) at 500, 1,000, 2,000 and 4,000 labelled rows
after the change, on every stream (benchmarks/streams.py).

    python -m benchmarks.learning_curve [--streams churn,sea,agrawal] [--points 500,1000,2000,4000] [--draws 1]

- lakeloop <family>: what a retraining after the drift trains, for each built-in family: the real
  path (Delta table, `prepare` with the regime starting at the change, the family's Ray Train
  trainer) on the 4,000 old-concept rows plus the rows since the change;
- hgb: scikit-learn's HistGradientBoostingClassifier on the rows since the change (one-hot inputs);
- arf: river's ARFClassifier, prequential over the old rows and then the new ones, in a virtualenv
  of its own (river 0.26 needs numpy 2);
- first champion: the default family trained on the old rows only.

Targets: the default family within 0.01 of hgb at every point, and at or above arf from
2,000 rows on.

With `--draws N` every stream is drawn N times (old, new and held-out rows from other seeds; draw 0
is the one a single run uses) and the targets are read on the learners' mean accuracy over the draws:
one draw's accuracy has a standard error of about 0.005 at these accuracies (5,000 held-out rows,
and a training sample of its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import venv
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from benchmarks.common import RESULTS, ROOT, write_result
from benchmarks.streams import STREAMS, Stream, stream_raw_config
from pipelines.scenarios.synthetic import EVENT_TIME

OLD_ROWS, HELDOUT_ROWS = 4000, 5000
# variants of a built-in family for comparisons (--families): its shipped params with these changed
VARIANTS = {"xgboost-no-refit": ("xgboost", {"refit": False})}
RIVER = "river==0.26.1"


def _accuracy(predicted, labels) -> float:
    return float(np.mean(np.asarray(predicted).astype(str) == np.asarray(labels).astype(str)))


def lakeloop_fit(stream: Stream, family: str, old: pd.DataFrame, new: pd.DataFrame, workdir: Path):
    """`family` trained as a retraining after the drift would train it; returns a predict function."""
    from pipelines.adapters import delta
    from pipelines.core.config import parse_config
    from pipelines.training import families
    from pipelines.training.data import prepare
    from pipelines.training.fitted_model import LakeloopModel

    raw = stream_raw_config(stream, workdir / f"{stream.name}-{family}-{len(new)}", "http://127.0.0.1:9")
    if family in VARIANTS:
        kind, params = VARIANTS[family]
        shipped = raw["train"]["families"][kind]
        raw["train"]["families"][family] = {"kind": kind, "params": {**shipped["params"], **params}}
    raw["train"].update(family=family, source="events")
    config = parse_config(raw)
    rows = pd.concat([old, new], ignore_index=True)
    delta.tables(config).events.append(pa.Table.from_pandas(rows, preserve_index=False).cast(stream.table(1, 0).schema))
    regime_start = None if new.empty else new[config.dataset.event_time].min().to_pydatetime()
    prepared = prepare(config, regime_start=regime_start)
    datasets = {name: prepared.splits[name].materialize() for name in ("train", "validation")}
    trained = families.fit(config, family, datasets, prepared.pipeline, None, f"curve-{family}-{time.time_ns()}")
    model = LakeloopModel(prepared.pipeline, trained.estimator)
    return lambda frame: model.predict_frame(frame[stream.features])["prediction"].to_numpy()


def hgb_fit(stream: Stream, rows: pd.DataFrame):
    from sklearn.ensemble import HistGradientBoostingClassifier

    encoded = pd.get_dummies(rows[stream.features], dtype=float)
    model = HistGradientBoostingClassifier(random_state=0).fit(encoded, rows[stream.label])

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return model.predict(
            pd.get_dummies(frame[stream.features], dtype=float).reindex(columns=encoded.columns, fill_value=0.0)
        )

    return predict


def river_python() -> Path:
    """A virtualenv with river (created once under bench-results/)."""
    directory = RESULTS / "river-venv"
    python = directory / "bin" / "python"
    if not python.exists():
        venv.create(directory, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", RIVER], check=True)
    return python


def _jsonl(frame: pd.DataFrame, columns: list[str], path: Path) -> Path:
    records = frame[columns].astype(object).where(frame[columns].notna(), None).to_dict("records")
    path.write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
    return path


def arf_curve(stream: Stream, old: pd.DataFrame, new: pd.DataFrame, heldout: pd.DataFrame, points, work: Path):
    columns = [*stream.features, stream.label]
    done = subprocess.run(
        [
            str(river_python()),
            str(ROOT / "benchmarks" / "river_arf.py"),
            str(_jsonl(pd.concat([old, new], ignore_index=True), columns, work / f"{stream.name}-stream.jsonl")),
            str(_jsonl(heldout, columns, work / f"{stream.name}-heldout.jsonl")),
            stream.label,
            f"{len(old)}:{','.join(map(str, points))}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def run_stream(stream: Stream, points: list[int], family_names: list[str], work: Path, draw: int = 0) -> dict:
    seed = 100 * draw  # draw 0: the seeds of a single run
    work = work / f"draw-{draw}"  # each draw's tables of its own
    work.mkdir(parents=True, exist_ok=True)
    old = stream.rows(OLD_ROWS, 1 + seed, drifted=False)
    start = old[EVENT_TIME].max() + timedelta(seconds=1)
    new_all = stream.rows(max(points), 2 + seed, drifted=True, start=start.to_pydatetime())
    heldout = stream.rows(HELDOUT_ROWS, 999 + seed, drifted=True)
    labels = heldout[stream.label]
    curve: dict[str, dict[int, float]] = {f"lakeloop {name}": {} for name in family_names}
    curve |= {"hgb": {}, "arf": {}}
    seconds: dict[str, float] = {}
    for n in points:
        new = new_all.iloc[:n]
        for name in family_names:
            started = time.perf_counter()
            curve[f"lakeloop {name}"][n] = _accuracy(lakeloop_fit(stream, name, old, new, work)(heldout), labels)
            seconds[f"{name} at {n}"] = round(time.perf_counter() - started, 1)
        curve["hgb"][n] = _accuracy(hgb_fit(stream, new)(heldout), labels)
    arf = arf_curve(stream, old, new_all, heldout, points, work)
    curve["arf"] = {int(k): v for k, v in arf["heldout"].items()}
    first = lakeloop_fit(stream, family_names[0], old, old.iloc[:0], work)
    return {
        "stream": stream.name,
        "draw": draw,
        "curve": {k: {str(n): round(v, 4) for n, v in c.items()} for k, c in curve.items()},
        "first_champion": round(_accuracy(first(heldout), labels), 4),
        "arf_prequential": round(arf["prequential"], 4),
        "fit_seconds": seconds,
    }


def mean_over_draws(results: list[dict]) -> dict:
    """One stream's runs (one per draw) as one: each learner's mean accuracy at each point."""
    curves = [r["curve"] for r in results]
    return {
        "stream": f"{results[0]['stream']}, mean of {len(results)} draws",
        "curve": {
            name: {n: round(float(np.mean([c[name][n] for c in curves])), 4) for n in curves[0][name]}
            for name in curves[0]
        },
        "first_champion": round(float(np.mean([r["first_champion"] for r in results])), 4),
    }


def report(results: list[dict], default: str, points: list[int]) -> str:
    lines = []
    for r in results:
        draw = f" (draw {r['draw']})" if r.get("draw") else ""
        lines.append(f"### {r['stream']}{draw}: new-concept accuracy after N labelled rows since the change")
        lines.append("| learner | " + " | ".join(f"{n:,}" for n in points) + " |")
        lines.append("| --- |" + " --- |" * len(points))
        for name, values in r["curve"].items():
            lines.append(f"| {name} | " + " | ".join(f"{values[str(n)]:.3f}" for n in points) + " |")
        lines.append(f"| first champion | {r['first_champion']:.3f} (old-concept rows only) |")
        ours, hgb, arf = r["curve"][f"lakeloop {default}"], r["curve"]["hgb"], r["curve"]["arf"]
        gaps = [ours[str(n)] - hgb[str(n)] for n in points]
        vs_arf = [ours[str(n)] - arf[str(n)] for n in points if n >= 2000]
        lines.append(
            f"{default} - hgb: " + ", ".join(f"{g:+.3f}" for g in gaps)
            + f" (target >= -0.01: {'met' if min(gaps) >= -0.01 else 'missed'}); "
            + f"{default} - arf from 2,000: " + ", ".join(f"{g:+.3f}" for g in vs_arf)
            + f" (target >= 0: {'met' if vs_arf and min(vs_arf) >= 0 else 'missed'})"
        )  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve")
    parser.add_argument("--streams", default="churn,sea,agrawal")
    parser.add_argument("--points", default="500,1000,2000,4000")
    parser.add_argument(
        "--families", default="xgboost,mlp", help=f"the first is the default family; variants: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--draws", type=int, default=1, help="draws of each stream; targets on the mean accuracy")
    args = parser.parse_args()
    points = [int(p) for p in args.points.split(",")]
    family_names = args.families.split(",")
    import ray

    results, means = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(
            address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level=logging.ERROR
        )
        try:
            for name in args.streams.split(","):
                draws = [run_stream(STREAMS[name], points, family_names, Path(tmp), d) for d in range(args.draws)]
                results += draws
                print(report(draws, family_names[0], points), flush=True)
                if args.draws > 1:
                    means.append(mean_over_draws(draws))
                    print(report(means[-1:], family_names[0], points), flush=True)
        finally:
            ray.shutdown()
    summary = report(means or results, family_names[0], points)
    write_result("learning_curve", {"streams": results, "means": means, "report": summary})


if __name__ == "__main__":
    sys.exit(main())
