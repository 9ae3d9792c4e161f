"""Drift statistics: false-alarm rate with no drift and power against a moderate one-feature shift.

    python -m benchmarks.drift_stats [--repeats 100] [--window 500] [--shift 6.0]

The detectors are lakeloop's own (`DriftSuite`, as stored with every model), fitted on 2,000
reference rows of demo data. Calm windows are fresh draws from the same generator; shifted windows
are calm windows with `monthly_charges` raised by --shift (about a third of its standard deviation)
and nothing else changed. The network is untrained (its weights do not change the false-alarm
rate of a test on its scores, and the feature and MMD detectors do not use it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rate(hits: int, n: int) -> str:
    p = hits / n
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)
    return f"{p:.3f} ± {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift_stats")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--shift", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "drift_stats.json")
    args = parser.parse_args()

    import ray

    from pipelines import synthetic
    from pipelines.config import load_config
    from pipelines.drift import DriftSuite
    from pipelines.features import FeaturePipeline
    from pipelines.model import NetworkSpec, TabularMLP
    from pipelines.scoring import LakeloopModel

    config = load_config(ROOT / "conf" / "lakeloop.yaml")
    features = config.dataset.feature_names
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    reference = synthetic.generate(config.monitor.reference_rows, 1).to_pandas()
    pipeline = FeaturePipeline(config.dataset).fit(ray.data.from_pandas(reference))
    ray.shutdown()
    hp = config.train.hyperparams
    spec = NetworkSpec(pipeline.output_dim, 2, hp.hidden, hp.depth, hp.dropout)
    model = LakeloopModel(pipeline, spec, TabularMLP(spec).state_dict())
    suite = DriftSuite.fit(reference[features], model, config.monitor)

    counts = {kind: {"features": 0, "multivariate": 0, "prediction": 0, "any": 0} for kind in ("calm", "shifted")}
    seconds = []
    for r in range(args.repeats):
        calm = synthetic.generate(args.window, 10_000 + r).to_pandas()[features]
        shifted = calm.assign(monthly_charges=calm["monthly_charges"] + args.shift)
        for kind, window in (("calm", calm), ("shifted", shifted)):
            started = time.perf_counter()
            results = suite.check(window)
            seconds.append(time.perf_counter() - started)
            for result in results:
                counts[kind][result.detector] += result.is_drift
            counts[kind]["any"] += any(r.is_drift for r in results)
    n = args.repeats
    p_any = counts["calm"]["any"] / n
    k, m = config.monitor.debounce.k, config.monitor.debounce.n
    trigger = sum(math.comb(m, j) * p_any**j * (1 - p_any) ** (m - j) for j in range(k, m + 1))
    lines = [f"alpha {config.monitor.alpha} per detector, window {args.window} rows, {n} repeats, "
             f"shift +{args.shift} in monthly_charges; mean check {1000 * sum(seconds) / len(seconds):.0f} ms",
             "| detector | false-alarm rate (no drift) | power (shifted) |", "| --- | --- | --- |"]
    lines += [f"| {d} | {_rate(counts['calm'][d], n)} | {_rate(counts['shifted'][d], n)} |"
              for d in ("features", "multivariate", "prediction", "any")]
    lines.append(f"retraining trigger ({k} of {m} windows) with no drift: {trigger:.4f} per window triple")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"counts": counts, "repeats": n, "trigger_false_alarm": trigger}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
