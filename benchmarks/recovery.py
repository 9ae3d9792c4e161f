"""Recovery after abrupt concept drift: the loop left alone, against what else a team could run.

    python -m benchmarks.recovery [--streams churn,sea] [--calm-rows 6000] [--drift-rows 3000] [--online-mode shadow]

Each stream runs on the real embedded stack (an `mlflow server`, a Ray head with the Jobs API, a
Serve endpoint): a champion trained on 4,000 rows of the old concept, then a labelled stream
through POST /predict and POST /feedback, checked by the monitor after every round, retraining
through the Jobs API, the gate, and the endpoint's swap (pipelines.scenarios.closed_loop). First a calm
phase (rounds of 1,000 rows of the old concept: the false-alarm check), then the concept changes
and rounds of 200 labelled rows continue until 1,000 rows after the swap, or --drift-rows.

Streams: `churn` is the demo generator's `concept` scenario (a different labelling rule); `sea`
is SEA concepts (Street & Kim 2001), theta 7 -> 9.5, with 10% label noise. SEA's gate metric is
accuracy: the shift of a threshold keeps the old model's ranking, so ROC AUC cannot see it.

Prequential (test-then-train) accuracy: every row is predicted by whatever served it, and only
then labelled. Compared on the same rows, in the same run:
- none: the first champion forever;
- schedule: the same model family retrained on all data so far every 1,000 labelled rows;
- oracle: the same model family trained only on the post-drift labelled rows lakeloop had when it
  submitted the retraining that recovered;
- HistGradientBoostingClassifier on those rows (a reference line).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import ROOT, write_result

CALM_ROUND, DRIFT_ROUND, SCHEDULE_EVERY, AFTER_RECOVERY = 1000, 200, 1000, 1000


@dataclass(frozen=True)
class Stream:
    name: str
    features: list[str]
    label: str
    metric: str

    def rows(self, n: int, seed: int, drifted: bool) -> pd.DataFrame:
        from pipelines.scenarios import synthetic

        if self.name == "sea":
            return synthetic.sea(n, seed, concept=4 if drifted else 3).to_pandas()
        return synthetic.generate(n, seed, "concept" if drifted else "none").to_pandas()

    def table(self, n: int, seed: int):
        from pipelines.scenarios import synthetic

        return synthetic.sea(n, seed, concept=3) if self.name == "sea" else synthetic.generate(n, seed)


STREAMS = {
    "churn": Stream(
        "churn",
        ["tenure_months", "monthly_charges", "support_calls", "age", "plan", "contract", "region"],
        "churned",
        "roc_auc",
    ),
    "sea": Stream("sea", ["x1", "x2", "x3"], "label", "accuracy"),
}


def stream_config(stream: Stream, root: Path, tracking_uri: str, gcs: str, jobs_api: str, online_mode: str = "off"):
    import yaml

    from pipelines.core.config import parse_config

    raw = yaml.safe_load((ROOT / "conf" / "lakeloop.yaml").read_text())
    raw["storage"]["root"] = str(root)
    raw["mlflow"].update(tracking_uri=tracking_uri, registered_model=f"recovery-{stream.name}-{uuid.uuid4().hex[:6]}")
    raw["ray"]["address"] = gcs
    raw["ray"]["dashboard"] = jobs_api
    raw["serving"]["poll_interval_s"] = 1.0
    raw["serving"]["prediction_log"].update(flush_interval_s=0.5)
    raw["gate"]["online"]["mode"] = online_mode
    if stream.name == "sea":
        raw["dataset"].update(label="label", features=[{"name": f, "kind": "numeric"} for f in stream.features])
        raw["gate"].update(metric="accuracy", thresholds={"accuracy": 0.7})
    return parse_config(raw, f"recovery:{stream.name}")


def fit_family(config, frame: pd.DataFrame):
    """The default family (xgboost) trained in-process on `frame`, unweighted: oldest 85% of rows by
    event time train, newest 15% stop the boosting early, as lakeloop's time split does."""
    from benchmarks.common import fitted_pipeline, fitted_xgboost

    dataset = config.dataset
    ordered = frame.sort_values(dataset.event_time).reset_index(drop=True)
    cut = int(len(ordered) * 0.85)
    return fitted_xgboost(config, fitted_pipeline(dataset, ordered.iloc[:cut]), ordered, validation_share=0.15)


def registered(config, version: str):
    """A registered lakeloop model version as a LakeloopModel (feature pipeline + network)."""
    import mlflow

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{config.mlflow.registered_model}/{version}").unwrap_python_model().model


def _encode(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    return pd.get_dummies(frame[features], dtype=float).fillna(0.0)


def fit_hgb(frame: pd.DataFrame, stream: Stream):
    from sklearn.ensemble import HistGradientBoostingClassifier

    encoded = _encode(frame, stream.features)
    model = HistGradientBoostingClassifier(random_state=0).fit(encoded, frame[stream.label])
    return lambda rows: model.predict(_encode(rows, stream.features).reindex(columns=encoded.columns, fill_value=0.0))


def _lakeloop_predict(model):
    return lambda rows: model.predict_frame(rows[model.feature_names])["prediction"].astype(int).to_numpy()


def _accuracy(predicted, labels) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(labels))) if len(labels) else float("nan")


def run_stream(
    stream: Stream,
    workdir: Path,
    tracking_uri: str,
    gcs: str,
    jobs_api: str,
    serve_port: int,
    calm_rows: int,
    drift_rows: int,
    online_mode: str = "off",
) -> dict:
    from ray import serve

    from pipelines.adapters import delta
    from pipelines.adapters.ray_serve import wait_ready
    from pipelines.scenarios import endpoint
    from pipelines.scenarios.closed_loop import ClosedLoop
    from pipelines.scenarios.traffic import LabelledStream
    from pipelines.training.workflow import train_and_register

    config = stream_config(stream, workdir / stream.name, tracking_uri, gcs, jobs_api, online_mode)
    delta.tables(config).events.append(stream.table(4000, 1))
    first = train_and_register(config)
    app = endpoint.variant(config, f"recovery-{stream.name}", f"/{stream.name}")
    url = endpoint.deploy(config, jobs_api, serve_port, app, main=False) + f"/{stream.name}"
    if not wait_ready(url, 180):
        raise SystemExit(f"{stream.name}: the endpoint never loaded the champion")
    loop = ClosedLoop(config, url, LabelledStream(url, stream.features, stream.label))
    frames, served, calm_windows, calm_triggers, jobs = [], [], 0, 0, []
    started = time.perf_counter()
    for seed in range(calm_rows // CALM_ROUND):  # the calm phase: nothing may trigger
        frames.append(stream.rows(CALM_ROUND, 1000 + seed, drifted=False))
        result = loop.round(frames[-1])
        served += result.served
        calm_windows += len(result.check.windows) + len(result.check.performance_windows)
        calm_triggers += bool(result.check.triggered)
        jobs += [result.job] if result.job else []
    drift_at = len(served)
    recovered_at, submitted_with, trained_with = None, None, 0
    for seed in range(drift_rows // DRIFT_ROUND):
        frames.append(stream.rows(DRIFT_ROUND, 2000 + seed, drifted=True))
        labelled_before = loop.labelled
        result = loop.round(frames[-1])
        served += result.served
        if result.job:
            jobs.append(result.job)
            trained_with = labelled_before + len(result.served) - drift_at  # post-drift rows when submitted
        if result.swapped and recovered_at is None:  # the job's promotion, or the online gate's
            recovered_at, submitted_with = len(served), trained_with
        if recovered_at is not None and len(served) - recovered_at >= AFTER_RECOVERY:
            break
    loop_seconds = time.perf_counter() - started
    serve.delete(f"recovery-{stream.name}")

    stream_rows = pd.concat(frames, ignore_index=True)
    order = np.array([row.position for row in served])
    labels = stream_rows[stream.label].to_numpy()[order]
    lakeloop = np.array([int(row.prediction) for row in served])
    versions = [row.version for row in served]
    first_model = registered(config, first.model_version)
    rows_in_order = stream_rows.iloc[order].reset_index(drop=True)
    events = delta.tables(config).events.read().to_pandas()
    # stream rows happen after the training table, in the order they were served
    rows_in_order[config.dataset.event_time] = events[config.dataset.event_time].max() + pd.to_timedelta(
        np.arange(1, len(rows_in_order) + 1), unit="s"
    )
    predictions = {"lakeloop": lakeloop, "none": _lakeloop_predict(first_model)(rows_in_order)}
    # schedule: every SCHEDULE_EVERY labelled rows, retrain on all data so far (events + stream)
    scheduled = predictions["none"].copy()
    for start in range(SCHEDULE_EVERY, len(rows_in_order), SCHEDULE_EVERY):
        model = fit_family(config, pd.concat([events, rows_in_order.iloc[:start]], ignore_index=True))
        scheduled[start : start + SCHEDULE_EVERY] = _lakeloop_predict(model)(
            rows_in_order.iloc[start : start + SCHEDULE_EVERY]
        )
    predictions["schedule"] = scheduled
    heldout = stream.rows(5000, 9999, drifted=True)
    result = {
        "stream": stream.name,
        "metric": stream.metric,
        "calm_windows": calm_windows,
        "calm_triggers": calm_triggers,
        "drift_at_row": drift_at,
        "rows": len(served),
        "jobs": [asdict(j) for j in jobs],
        "loop_seconds": round(loop_seconds, 1),
        "failed_requests": loop.stream.failed,
        "online_mode": online_mode,
    }
    if recovered_at is None:
        result.update(recovered=False, prequential=_segments(predictions, labels, drift_at, None))
        return result
    post_drift = rows_in_order.iloc[drift_at : drift_at + submitted_with]
    oracle, hgb = fit_family(config, post_drift), fit_hgb(post_drift, stream)
    predictions["oracle"] = np.where(
        np.arange(len(labels)) >= recovered_at, _lakeloop_predict(oracle)(rows_in_order), -1
    )
    predictions["hgb"] = np.where(np.arange(len(labels)) >= recovered_at, hgb(rows_in_order), -1)
    final = registered(config, versions[-1])
    held = {
        "lakeloop (serving at the end)": _accuracy(_lakeloop_predict(final)(heldout), heldout[stream.label]),
        "oracle": _accuracy(_lakeloop_predict(oracle)(heldout), heldout[stream.label]),
        "hgb": _accuracy(hgb(heldout), heldout[stream.label]),
        "none": _accuracy(_lakeloop_predict(first_model)(heldout), heldout[stream.label]),
    }
    result.update(
        recovered=True,
        rows_to_recover=recovered_at - drift_at,
        oracle_rows=int(submitted_with),
        serving_version=versions[-1],
        heldout_accuracy=held,
        prequential=_segments(predictions, labels, drift_at, recovered_at),
    )
    return result


def _segments(predictions: dict, labels: np.ndarray, drift_at: int, recovered_at: int | None) -> dict:
    bounds = {"before drift": (0, drift_at), "first 1,000 after drift": (drift_at, drift_at + 1000)}
    if recovered_at is not None:
        bounds["after recovery"] = (recovered_at, len(labels))
    table = {}
    for name, predicted in predictions.items():
        table[name] = {}
        for segment, (a, b) in bounds.items():
            part = np.asarray(predicted[a:b])
            table[name][segment] = None if (part == -1).any() or b <= a else _accuracy(part, labels[a:b])
    return table


def report(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"### {r['stream']} (gate metric {r['metric']}), {r['rows']} labelled rows, "
            f"{r['failed_requests']} failed requests"
        )
        lines.append(f"calm phase: {r['calm_windows']} windows checked, {r['calm_triggers']} retraining triggers")
        if not r["recovered"]:
            lines.append("NOT RECOVERED within the stream")
        else:
            lines.append(
                f"recovered after {r['rows_to_recover']} labelled rows since the drift "
                f"(retrained on {r['oracle_rows']} post-drift rows; now serving version {r['serving_version']})"
            )
            held = r["heldout_accuracy"]
            lines.append("held-out new-concept accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in held.items()))
        segments = list(next(iter(r["prequential"].values())))
        lines.append("| prequential accuracy | " + " | ".join(segments) + " |")
        lines.append("| --- |" + " --- |" * len(segments))
        for name, values in r["prequential"].items():
            lines.append(
                f"| {name} | " + " | ".join("-" if values[s] is None else f"{values[s]:.3f}" for s in segments) + " |"
            )
        lines.append(
            "jobs: " + "; ".join(f"{j['submission_id']} {j['outcome']} in {j['seconds']} s" for j in r["jobs"])
        )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery")
    parser.add_argument("--streams", default="churn,sea")
    parser.add_argument("--calm-rows", type=int, default=6000)
    parser.add_argument("--drift-rows", type=int, default=3000)
    parser.add_argument(
        "--online-mode", choices=("off", "shadow", "canary"), default="off", help="gate.online.mode for every stream"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    import ray
    from ray import serve

    from pipelines.adapters import local_services as stack

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mlflow_process, mlflow_service = stack.start_mlflow_server(workdir / "mlflow")
        head_process, head_service, info = stack.start_ray_head(workdir / "ray", stack.free_port())
        try:
            ray.init(address=info["gcs_address"], logging_level="ERROR")
            port = stack.free_port()
            try:
                for name in args.streams.split(","):
                    results.append(
                        run_stream(
                            STREAMS[name],
                            workdir,
                            mlflow_service.url,
                            info["gcs_address"],
                            head_service.url,
                            port,
                            args.calm_rows,
                            args.drift_rows,
                            args.online_mode,
                        )
                    )
                    print(report(results[-1:]), flush=True)
            finally:
                serve.shutdown()  # before the head goes: Serve's HAProxy ingress would outlive it
                ray.shutdown()
        finally:
            stack.stop_pid(head_process.pid)
            stack.stop_pid(mlflow_process.pid)
    write_result("recovery", {"streams": results, "report": report(results)})


if __name__ == "__main__":
    main()
