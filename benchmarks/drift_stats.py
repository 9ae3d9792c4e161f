"""Drift statistics: false-alarm rate with no drift, power against a moderate one-feature shift,
and the time per check of each detector.

    python -m benchmarks.drift_stats [--references 20] [--windows 10] [--window 500] [--shift 6.0]

The detectors are lakeloop's own (`DriftSuite`, as stored with every model), each fitted on a fresh
2,000-row reference sample of demo data with a freshly initialised network: a test against a
fixed reference has a false-alarm rate that depends on that reference, so the rate is averaged
over references (and the spread between them is printed). Calm windows are fresh draws from the
same generator; shifted windows are the same windows with `monthly_charges` raised by --shift
(about a third of its standard deviation) and nothing else changed. The network is untrained: its
weights do not change the false-alarm rate of a test on its scores, and the feature and MMD
detectors do not use it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("calm", "shifted")


def _rate(hits: int, n: int) -> str:
    p = hits / n
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)
    return f"{p:.3f} ± {half:.3f}"


def _suite(config, pipeline, seed: int):
    import torch

    from benchmarks.common import untrained_mlp
    from pipelines.scenarios import synthetic
    from pipelines.training.detectors import DriftSuite

    torch.manual_seed(seed)
    model = untrained_mlp(config, pipeline)
    reference = synthetic.generate(config.monitor.reference_rows, seed).to_pandas()
    return DriftSuite.fit(reference[config.dataset.feature_names], model, config.monitor, seed=seed)


def timings(suite, features: list[str], sizes: tuple[int, ...] = (500, 1000, 5000), repeats: int = 5) -> dict:
    """Median seconds per check, by detector and window size."""
    from pipelines.scenarios import synthetic

    out = {}
    for size in sizes:
        window = synthetic.generate(size, 99).to_pandas()[features]
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            results = suite.check(window)
            runs.append({"total": time.perf_counter() - started, **{r.detector: r.seconds for r in results}})
        out[size] = {k: sorted(r[k] for r in runs)[repeats // 2] for k in runs[0]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drift_stats")
    parser.add_argument("--references", type=int, default=20, help="independent reference samples (models)")
    parser.add_argument("--windows", type=int, default=10, help="calm and shifted windows per reference")
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--shift", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "drift_stats.json")
    args = parser.parse_args()

    import ray

    from pipelines.core.config import load_config
    from pipelines.scenarios import synthetic
    from pipelines.training.detectors import DETECTORS
    from pipelines.training.features import FeaturePipeline

    config = load_config(ROOT / "conf" / "lakeloop.yaml")
    features = config.dataset.feature_names
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        pipeline = FeaturePipeline(config.dataset).fit(ray.data.from_pandas(synthetic.generate(5000, 0).to_pandas()))
    finally:
        ray.shutdown()

    names = (*DETECTORS, "any")
    counts = {kind: dict.fromkeys(names, 0) for kind in KINDS}
    per_reference = []
    for ref in range(args.references):
        suite = _suite(config, pipeline, seed=1 + ref)
        calm_alarms = 0
        for w in range(args.windows):
            calm = synthetic.generate(args.window, 10_000 + ref * 1000 + w).to_pandas()[features]
            shifted = calm.assign(monthly_charges=calm["monthly_charges"] + args.shift)
            for kind, window in zip(KINDS, (calm, shifted), strict=True):
                results = suite.check(window)
                for result in results:
                    counts[kind][result.detector] += result.is_drift
                fired = any(r.is_drift for r in results)
                counts[kind]["any"] += fired
                calm_alarms += fired and kind == "calm"
        per_reference.append(calm_alarms / args.windows)
    check_times = timings(suite, features)

    n = args.references * args.windows
    p_any = counts["calm"]["any"] / n
    k, m = config.monitor.debounce.k, config.monitor.debounce.n
    trigger = sum(math.comb(m, j) * p_any**j * (1 - p_any) ** (m - j) for j in range(k, m + 1))
    lines = [
        f"alpha {config.monitor.alpha} per window ({config.monitor.alpha / len(DETECTORS):.4f} per detector); "
        f"window {args.window} rows; {args.references} references x {args.windows} windows = {n} of each kind; "
        f"shift +{args.shift} in monthly_charges",
        "| detector | false-alarm rate (no drift) | power (shifted) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {d} | {_rate(counts['calm'][d], n)} | {_rate(counts['shifted'][d], n)} |" for d in names]
    lines.append(f"window false-alarm rate per reference: {', '.join(f'{p:.2f}' for p in per_reference)}")
    lines.append(f"retraining trigger ({k} of {m} windows) with no drift: {trigger:.4f} per window triple")
    lines += ["| window rows | " + " | ".join(check_times[500]) + " |", "| --- " * (len(check_times[500]) + 1) + "|"]
    lines += [
        f"| {size} | " + " | ".join(f"{1000 * s:.0f} ms" for s in row.values()) + " |"
        for size, row in check_times.items()
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "counts": counts,
                "checks_per_kind": n,
                "per_reference_false_alarm": per_reference,
                "trigger_false_alarm": trigger,
                "check_seconds": check_times,
                "window": args.window,
                "shift": args.shift,
            },
            indent=2,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
