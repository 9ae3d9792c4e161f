"""Online feature lookups: what looking the views up by entity key adds to a request.

    python -m benchmarks.online_lookup [--seconds 8] [--rounds 3] [--customers 100000]

One registered model (the demo's features), the worked example's feature tables (a profile view and a
usage view with late corrections, `--customers` entities) materialized to both online stores, and
one Serve deployment (HAProxy, conf/serve.yaml's options) with three applications: `wide` (requests
send every feature, no lookup: the baseline), `delta` (requests send the entity key; the embedded
store, in each replica's memory) and `redis` (the key; a redis-server on loopback that this benchmark
starts and stops). wrk at c=1 sends /invocations bodies of 1 and of 100 rows to each (the same
entities: keys, or their values as the stores hold them), `--rounds`
times in rotating order; the added cost is a store's p50 minus the wide app's p50 in the same round,
and the result is the median over rounds (the spread beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import registered_model, write_result
from benchmarks.http_load import load, require_wrk

TARGET_ADDED_MS = 0.2  # embedded store, 1 row, c=1
SIZES = (1, 100)
APPS = ("wide", "delta", "redis")


def _bodies(customers: list[str], values) -> dict[tuple[str, int], str]:
    """Per app and size, an /invocations body: the wide app gets the entities' feature values as the
    stores hold them (the same rows the model scores either way), the stores' apps their keys."""
    records = values.astype(object).where(values.notna(), None).to_dict(orient="records")
    bodies = {}
    for size in SIZES:
        bodies[("wide", size)] = json.dumps({"dataframe_records": records[:size]})
        keyed = [{"customer_id": c} for c in customers[:size]]
        for app in ("delta", "redis"):
            bodies[(app, size)] = json.dumps({"dataframe_records": keyed})
    return bodies


def _configs(base, redis_url: str) -> dict:
    """The wide app's configuration (the demo's) and the two stores' (the worked example's views);
    each app logs to tables of its own."""
    from pipelines.core.config import parse_config
    from pipelines.scenarios.feature_tables import features_section

    configs = {}
    for app in APPS:
        raw = json.loads(base.model_dump_json())
        raw["serving"]["prediction_log"].update(
            predictions_table=f"{app}_predictions", feedback_table=f"{app}_feedback", shadow_table=f"{app}_shadow"
        )
        if app != "wide":
            raw["dataset"]["table"] = "training_set"
            raw["features"] = {**features_section(), "online": {"store": app, "redis_url": redis_url}}
        configs[app] = parse_config(raw)
    return configs


def _land(config, customers: int):
    from pipelines.adapters import delta
    from pipelines.scenarios.feature_tables import TABLES, feature_tables

    generated = feature_tables(customers * 2, 0, customers=customers)
    for part, name in TABLES.items():
        delta.tables(config).named(name).append(getattr(generated, part))
    return generated


def measure(seconds: float, rounds: int, customers: int) -> dict:
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # before Ray starts: the shipped ingress
    import ray
    from ray import serve

    from pipelines.adapters.local_services import free_port, stop_pid
    from pipelines.adapters.ray_serve import wait_ready
    from pipelines.feature_tables.materialize import materialize
    from pipelines.scenarios import endpoint
    from tests.helpers import customers_of, newest_event, offline_values
    from tests.servers import start_redis

    require_wrk()
    with tempfile.TemporaryDirectory() as tmp, registered_model(Path(tmp)) as model:
        from benchmarks.common import demo_config

        redis_pid, redis_url = start_redis(Path(tmp))
        try:
            configs = _configs(demo_config(Path(tmp) / "data", model.tracking_uri), redis_url)
            generated = _land(configs["delta"], customers)
            at = newest_event(generated)
            for app in ("delta", "redis"):
                materialize(configs[app], at)
            customers = customers_of(generated)[::-1][: max(SIZES)]  # other entities than the first written
            values = offline_values(configs["delta"], generated, at, customers)
            bodies = _bodies(customers, values[configs["wide"].dataset.feature_names])
            context = ray.init(
                address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                dashboard_port=free_port(), logging_level="ERROR",
            )  # fmt: skip
            try:
                apps = [endpoint.variant(configs[app], app, f"/{app}") for app in APPS]
                url = endpoint.deploy(
                    configs["wide"], f"http://{context.dashboard_url}", free_port(), *apps, main=False
                )
                for app in APPS:
                    if not wait_ready(url, 180, f"/{app}/health"):
                        raise SystemExit(f"the {app} app did not load the model")
                rows = _rounds(url, bodies, seconds, rounds)
            finally:
                serve.shutdown()
                ray.shutdown()
        finally:
            stop_pid(redis_pid)
    return _summary(rows, customers)


def _rounds(url: str, bodies: dict, seconds: float, rounds: int) -> list[dict]:
    rows = []
    for number in range(rounds):
        order = APPS[number % 3 :] + APPS[: number % 3]  # rotating: no app always runs first
        for size in SIZES:
            for app in order:
                load(f"{url}/{app}/invocations", bodies[(app, size)], 1, 1)  # warm the connection path
                point = load(f"{url}/{app}/invocations", bodies[(app, size)], 1, seconds)
                rows.append({"round": number, "app": app, "rows": size, **point})
    return rows


def _summary(rows: list[dict], customers: int) -> dict:
    added: dict = {}
    for store in ("delta", "redis"):
        for size in SIZES:
            deltas = []
            for number in sorted({r["round"] for r in rows}):
                at = {r["app"]: r for r in rows if r["round"] == number and r["rows"] == size}
                deltas.append(at[store]["p50_ms"] - at["wide"]["p50_ms"])
            added[f"{store} {size}"] = {"median_ms": statistics.median(deltas), "rounds_ms": deltas}
    embedded = added["delta 1"]["median_ms"]
    targets = [
        {
            "claim": f"p50 added by {store} lookups, {size} row{'s' if size > 1 else ''} per request, c=1 "
            f"(ms; vs the same request with every feature sent)",
            "value": added[f"{store} {size}"]["median_ms"],
            "target": f"<= {TARGET_ADDED_MS}" if (store, size) == ("delta", 1) else "",
            "met": ("met" if embedded <= TARGET_ADDED_MS else "MISSED") if (store, size) == ("delta", 1) else "",
        }
        for store in ("delta", "redis")
        for size in SIZES
    ]
    errors = sum(r["errors"] for r in rows)
    return {"entities": customers, "rows": rows, "added": added, "errors": errors, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    result = measure(args.seconds, args.rounds, args.customers)
    path = write_result("online_lookup", result)
    for target in result["targets"]:
        print(f"{target['claim']}: {target['value']:.3f} {target['met']}")
    print(f"errors: {result['errors']}; wrote {path}")


if __name__ == "__main__":
    main()
