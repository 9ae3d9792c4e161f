"""Collect bench-results/*.json into one table: bench-results/results.md and results.json.

python -m benchmarks.report
"""

from __future__ import annotations

import json

from benchmarks.batch_inference import TARGET_FIRST, TARGET_WARM
from benchmarks.common import RESULTS, machine


def _targets(area: str):
    """Rows of a benchmark that lists its own claims: {claim, value, target, met}."""

    def rows(data: dict) -> list[tuple[str, str, str, str]]:
        return [
            (area, t["claim"], f"{t['value']:.2f}" + (f" (target {t['target']})" if t["target"] else ""), t["met"])
            for t in data["targets"]
        ]

    return rows


def _preprocessing(data: dict) -> list[tuple[str, str, str, str]]:
    largest = max(data["ray_vs_pandas"], key=int)
    ratio = data["ray_vs_pandas"][largest]
    rows = [
        ("preprocessing", f"Ray Data vs single-process pandas at {int(size):,} rows", f"{r:.2f}x", "")
        for size, r in data["ray_vs_pandas"].items()
    ]
    rows[-1] = (rows[-1][0], rows[-1][1], f"{ratio:.2f}x (target >= 1.6x)", "met" if ratio >= 1.6 else "MISSED")
    at = {r["engine"]: r for r in data["rows"] if r["size"] == int(largest)}
    if "polars" in at:
        slower = at["ray"]["seconds"] / at["polars"]["seconds"]
        claim = f"Ray Data time vs polars at {int(largest):,} rows"
        rows.append(("preprocessing", claim, f"{slower:.1f}x (target <= 2x)", "met" if slower <= 2 else "MISSED"))
    rows.append(
        (
            "preprocessing",
            f"peak memory at {int(largest):,} rows",
            ", ".join(f"{engine} {r['peak_mb']:,.0f} MB" for engine, r in at.items()),
            "",
        )
    )
    return rows


def _point_in_time(data: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for labels, ratios in data["seconds_vs_duckdb"].items():
        ray = next(engine for engine in ratios if engine.startswith("lakeloop (Ray"))
        claim = (
            f"point-in-time join time vs DuckDB ASOF JOIN, {int(labels):,} labels x {data['entities']:,} entities"
            f" (median of {data.get('rounds', 1)} rounds)"
        )
        target = int(labels) >= 10_000_000
        verdict = ("met" if ratios[ray] <= 2 else "MISSED") if target else ""
        rows.append(("feature tables", claim, f"{ratios[ray]:.2f}x" + (" (target <= 2x)" if target else ""), verdict))
    same = all(r["same_values_as_lakeloop_ray"] for r in data["rows"])
    rows.append(("feature tables", "every engine joined the same values", str(same), "met" if same else "MISSED"))
    return rows


def _training(data: dict) -> list[tuple[str, str, str, str]]:
    overhead = data["per_epoch_overhead"]
    rows = [
        (
            "training",
            "TorchTrainer (1 worker) per-epoch time vs plain PyTorch",
            f"{overhead:+.0%} (target <= +10%)",
            "met" if overhead <= 0.10 else "MISSED",
        )
    ]
    rows += [("training", f"{r['setup']}: fixed start-up", f"{r['fixed_s']:.1f} s", "") for r in data["rows"]]
    return rows


def _batch(data: dict) -> list[tuple[str, str, str, str]]:
    rows, first = data["table_rows"], data["first_call_time_ratio"]
    return [
        (
            "batch inference",
            f"batch API (shipped settings), second call, vs single-process pyfunc, {rows:,} rows",
            f"{data['speedup']:.2f}x as fast (target >= {TARGET_WARM}x)",
            "met" if data["speedup"] >= TARGET_WARM else "MISSED",
        ),
        (
            "batch inference",
            f"batch API (shipped settings), first call, time vs single-process pyfunc, {rows:,} rows",
            f"{first:.2f}x the time (target <= {TARGET_FIRST}x)",
            "met" if first <= TARGET_FIRST else "MISSED",
        ),
        (
            "batch inference",
            f"the actor pool forced (inline_rows 0), second call, vs single-process pyfunc, {rows:,} rows",
            f"{data['pool_speedup']:.2f}x as fast",
            "",
        ),
    ]


def _drift(data: dict) -> list[tuple[str, str, str, str]]:
    counts, n = data["counts"], data["checks_per_kind"]
    seconds = data["check_seconds"]
    return [
        (
            "drift",
            "window false-alarm rate, no drift (alpha 0.05)",
            f"{counts['calm']['any'] / n:.3f} over {n} windows",
            "met" if counts["calm"]["any"] / n <= 0.05 + 1.96 * (0.05 * 0.95 / n) ** 0.5 else "MISSED",
        ),
        ("drift", f"power, +{data['shift']} shift of one feature", f"{counts['shifted']['any'] / n:.3f}", ""),
        (
            "drift",
            "full check of a 1,000-row window (7 features, 3 detectors)",
            f"{seconds['1000']['total']:.2f} s (target <= 1 s)",
            "met" if seconds["1000"]["total"] <= 1 else "MISSED",
        ),
    ]


def _online_gate(data: dict) -> list[tuple[str, str, str, str]]:
    pooled, alpha, kinds = data["pooled"], data["alpha"], data["summary"]
    rate = pooled["online_false"] / max(pooled["not_better"], 1)
    offline = pooled["offline_false"] / max(pooled["not_better"], 1)
    better = kinds["better"]["rows_to_promote"]
    return [
        (
            "online gate",
            f"false promotions of {pooled['not_better']} candidates not better live "
            f"(offline gate alone: {offline:.2f})",
            f"{rate:.3f} (95% upper bound {data['false_promotion_upper_95']:.3f})",
            "met" if rate <= alpha else "MISSED",
        ),
        (
            "online gate",
            f"better candidates after a concept change promoted ({kinds['better']['trials']} trials)",
            f"{len(better)}, after at most {max(better, default=0)} labelled rows",
            "",
        ),
    ]


def _loop(data: dict) -> list[tuple[str, str, str, str]]:
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in data["stages"].items())
    return [("loop", "drifted traffic checked -> new model serving", f"{data['total_s']:.0f} s ({stages})", "")]


def _recovery(data: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for stream in data["streams"]:
        name = stream["stream"]
        rows.append(
            (
                "recovery",
                f"{name}: retraining triggers over {stream['calm_windows']} calm windows",
                str(stream["calm_triggers"]),
                "met" if stream["calm_triggers"] == 0 and stream["calm_windows"] >= 30 else "MISSED",
            )
        )
        if not stream["recovered"]:
            rows.append(
                (
                    "recovery",
                    f"{name}: labelled rows after the drift until a retrained model serves",
                    "not recovered (target <= 1,500)",
                    "MISSED",
                )
            )
            continue
        held = stream["heldout_accuracy"]
        ours, oracle = held["lakeloop (serving at the end)"], held["oracle"]
        rows.append(
            (
                "recovery",
                f"{name}: labelled rows after the drift until a retrained model serves",
                f"{stream['rows_to_recover']:,} (target <= 1,500)",
                "met" if stream["rows_to_recover"] <= 1500 else "MISSED",
            )
        )
        rows.append(
            (
                "recovery",
                f"{name}: new-concept accuracy, lakeloop vs oracle (same family, same post-drift rows)",
                f"{ours:.3f} vs {oracle:.3f}; HGB {held['hgb']:.3f}, no retraining {held['none']:.3f} "
                "(target >= oracle - 0.02)",
                "met" if ours >= oracle - 0.02 else "MISSED",
            )
        )
        after = stream["prequential"]["lakeloop"]["after recovery"]
        schedule = stream["prequential"]["schedule"]["after recovery"]
        rows.append(
            (
                "recovery",
                f"{name}: prequential accuracy after recovery, lakeloop vs retraining on all data on a schedule",
                f"{after:.3f} vs {schedule:.3f}",
                "",
            )
        )
    return rows


def _object_store(data: dict) -> list[tuple[str, str, str, str]]:
    rows = [
        (
            "object store",
            f"Delta appends, {r['writers']} writer(s), {r['store']}",
            f"{r['commits_per_s']} commits/s, p50 {r['latency_p50_ms']} ms, p95 {r['latency_p95_ms']} ms",
            "met" if r["versions_contiguous"] else "MISSED (versions not contiguous)",
        )
        for r in data["append"]
    ]
    rows += [
        (
            "object store",
            f"monitor read at {r['commits']:,} commits, {r['store']}",
            f"first pass {r['first_pass_s']} s ({r['first_pass_rows']:,} rows), "
            f"steady pass {r['steady_pass_s']} s ({r['steady_pass_rows']} rows)",
            "",
        )
        for r in data["monitor"]
    ]
    return rows


def _table_upkeep(data: dict) -> list[tuple[str, str, str, str]]:
    return [
        (
            "table upkeep",
            f"{what} at {t['commits']:,} commits ({t['files_before']:,} -> {t['files_after']} files), before -> after",
            f"{t['before'][key]} -> {t['after'][key]} ms ({t['speedup'][key]}x)",
            "",
        )
        for t in data["tables"]
        for key, what in (
            ("open_ms", "open"),
            ("filtered_read_ms", "filtered read"),
            ("monitor_steady_pass_ms", "monitor steady pass"),
        )
    ]


def _learning_curve(data: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for stream in data["streams"]:
        curve = stream["curve"]
        default = next(name for name in curve if name.startswith("lakeloop "))
        points = list(curve[default])
        gaps = [curve[default][n] - curve["hgb"][n] for n in points]
        late = [curve[default][n] - curve["arf"][n] for n in points if int(n) >= 2000]
        values = ", ".join(f"{curve[default][n]:.3f}" for n in points)
        rows.append(
            (
                "learning",
                f"{stream['stream']}: {default} new-concept accuracy at {', '.join(points)} rows, minus hgb",
                f"{values}; {', '.join(f'{g:+.3f}' for g in gaps)} (target >= -0.01)",
                "met" if min(gaps) >= -0.01 else "MISSED",
            )
        )
        rows.append(
            (
                "learning",
                f"{stream['stream']}: {default} minus river ARF from 2,000 rows",
                f"{', '.join(f'{g:+.3f}' for g in late)} (target >= 0)",
                "met" if late and min(late) >= 0 else "MISSED",
            )
        )
    return rows


SECTIONS = {
    "serve_load": _targets("serving"),
    "wide_pyfunc": _targets("wide table"),
    "preprocessing": _preprocessing,
    "point_in_time": _point_in_time,
    "online_lookup": _targets("feature tables"),
    "training": _training,
    "batch_inference": _batch,
    "drift_stats": _drift,
    "online_gate": _online_gate,
    "loop": _loop,
    "recovery": _recovery,
    "learning_curve": _learning_curve,
    "object_store": _object_store,
    "table_upkeep": _table_upkeep,
}


def main() -> None:
    found = {
        name: json.loads((RESULTS / f"{name}.json").read_text())
        for name in SECTIONS
        if (RESULTS / f"{name}.json").exists()
    }
    rows = [row for name, data in found.items() for row in SECTIONS[name](data)]
    info = machine()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB, Python {info['python']}; {versions}",
        "",
        "| area | comparison (baseline measured in the same run) | result | target |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    missing = [name for name in SECTIONS if name not in found]
    if missing:
        lines.append(f"\nnot run: {', '.join(missing)}")
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "results.json").write_text(
        json.dumps(
            {
                "machine": info,
                "results": found,
                "summary": [{"area": a, "comparison": b, "result": c, "target": d} for a, b, c, d in rows],
            },
            indent=2,
            default=str,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
