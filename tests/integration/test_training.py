"""Training, tuning, the registry and the gate against a real mlflow server and local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from pipelines.adapters import delta
from pipelines.adapters.registry import Registry
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.core.gate import GateDecision
from pipelines.scenarios import synthetic
from pipelines.training import search
from pipelines.training.families import QUIET_DRIVER_KINDS
from pipelines.training.workflow import train_and_register
from tests.helpers import ROOT, run_scenario, wait_for, write_config

pytestmark = pytest.mark.integration


def small_config(raw: dict, tracking_uri: str, **train: object) -> LakeloopConfig:
    raw["mlflow"].update(tracking_uri=tracking_uri, registered_model=f"churn-{uuid.uuid4().hex[:8]}")
    raw["train"].update({"max_epochs": 3, "patience": 2, **train})
    return parse_config(raw)


def records() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "tenure_months": 2,
                "monthly_charges": 110.0,
                "support_calls": 5,
                "age": 30,
                "plan": "basic",
                "contract": "month-to-month",
                "region": "north",
            },
            {
                "tenure_months": 70,
                "monthly_charges": None,
                "support_calls": 0,
                "age": 50,
                "plan": "premium",
                "contract": "two-year",
                "region": "east",
            },
        ]
    )


def test_train_registers_promotes_and_gate_refuses_a_worse_model(
    raw_config: dict, mlflow_server: str, ray_local: None
) -> None:
    config = small_config(raw_config, mlflow_server, rows_per_worker=500)  # 2 data-parallel workers
    delta.tables(config).events.append(synthetic.generate(3000, 1))
    first = train_and_register(config)
    assert first.promoted and first.model_version == "1"
    assert "first model" in first.reason
    assert first.metrics["roc_auc"] > 0.8

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{config.mlflow.registered_model}@champion")
    predicted = model.predict(records())
    assert list(predicted["prediction"]) == [1, 0]
    np.testing.assert_allclose(predicted[["probability_0", "probability_1"]].sum(axis=1), 1.0, rtol=1e-6)
    loose = records().astype({"tenure_months": float}).assign(age=[None, 41])  # floats, nulls: as before
    assert model.predict(loose)["prediction"].notna().all()
    with pytest.raises(ValueError, match="feature 'tenure_months' must be numeric"):
        model.predict(records().assign(tenure_months=["x", 1]))
    features = model.metadata.metadata["lakeloop_features"]
    assert [f["name"] for f in features] == config.dataset.feature_names

    client = MlflowClient(mlflow_server)
    run = client.get_run(first.run_id)
    assert run.data.params["tables"] == f"{delta.tables(config).events.uri} version 0"
    assert len(run.data.tags["lakeloop.worker_nodes"].split(",")) == config.train.num_workers
    assert set(first.seconds) == {"prepare", "fit", "evaluate", "gate"}
    assert run.data.metrics["seconds_fit"] == first.seconds["fit"] > 0
    (logged,) = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{first.run_id}'")
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["test_roc_auc"] == run.data.metrics["test_roc_auc"] == first.metrics["roc_auc"]  # on the model page
    assert run.inputs.dataset_inputs[0].dataset.source_type == "delta_table"
    assert len(client.get_metric_history(first.run_id, "val_roc_auc")) >= 2
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert artifacts == {"plots/learning_curves.png", "plots/confusion_matrix.png"}
    assert client.list_artifacts(first.run_id, "preprocessor")[0].path == "preprocessor/pipeline.pkl"

    weak = config.train.families["mlp"].model_copy(update={"params": {"lr": 1e-5, "hidden": 2, "depth": 1}})
    families = {**config.train.families, "mlp": weak}
    worse = config.model_copy(
        update={"train": config.train.model_copy(update={"family": "mlp", "max_epochs": 1, "families": families})}
    )
    second = train_and_register(worse)
    assert not second.promoted
    assert second.champion_version == "1"
    assert "champion" in second.reason or "below the floor" in second.reason
    registry = Registry.from_config(config)
    assert registry.champion().version == "1"
    assert registry.version_by_alias("challenger").version == "2"
    assert client.get_model_version(config.mlflow.registered_model, "2").tags["lakeloop.gate_reason"] == second.reason


def _register_dummy_versions(client: MlflowClient, name: str, count: int) -> list[str]:
    mlflow.set_tracking_uri(client.tracking_uri)
    versions = []
    with mlflow.start_run() as run:
        mlflow.log_text("placeholder", "model/MLmodel")
    for _ in range(count):
        versions.append(mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version)
    return [str(v) for v in versions]


def test_two_trainings_finishing_at_once_cannot_both_win(mlflow_server: str) -> None:
    client = MlflowClient(mlflow_server)
    name = f"race-{uuid.uuid4().hex[:8]}"
    champion, left, right = _register_dummy_versions(client, name, 3)
    registry = Registry(client, name)
    client.set_registered_model_alias(name, "champion", champion)
    compared = registry.state()
    decisions: dict[str, GateDecision] = {}
    barrier = threading.Barrier(2)

    def promote(version: str) -> None:
        barrier.wait()
        decisions[version] = registry.promote(version, compared, GateDecision(True, "better"))

    threads = [threading.Thread(target=promote, args=(v,)) for v in (left, right)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [v for v, d in decisions.items() if d.promote]
    assert len(winners) == 1
    loser = right if winners == [left] else left
    assert "another promotion is replacing" in decisions[loser].reason or "champion moved" in decisions[loser].reason
    assert registry.champion().version == winners[0]
    assert registry.version_by_alias("previous").version == champion
    # Rollback restores the champion it replaced.
    assert registry.rollback() == (winners[0], champion)
    assert registry.champion().version == champion


def test_tune_searches_each_family_with_its_own_space_as_child_runs(
    raw_config: dict, mlflow_server: str, ray_local: None
) -> None:
    raw_config["tune"].update(num_samples=2, grace_period=1, families=["xgboost", "mlp"])
    config = small_config(raw_config, mlflow_server, num_workers=1, cpus_per_worker=1)
    delta.tables(config).events.append(synthetic.generate(2000, 4))
    folders = set(Path(tempfile.gettempdir()).glob("lakeloop-fit-*"))
    outcome = train_and_register(config, search.search, "tune")
    # a trial's process ends before its run could remove a folder of its own: it makes none
    assert set(Path(tempfile.gettempdir()).glob("lakeloop-fit-*")) - folders == set()
    client = MlflowClient(mlflow_server)
    children = client.search_runs(
        [client.get_run(outcome.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'"
    )
    by_family = {f: [c.data.params for c in children if c.data.params["family"] == f] for f in ("xgboost", "mlp")}
    assert [len(by_family["xgboost"]), len(by_family["mlp"])] == [2, 2]  # every family, num_samples each
    assert len({(p["hp_eta"], p["hp_max_leaves"]) for p in by_family["xgboost"]}) == 2  # its own space
    assert len({(p["hp_hidden"], p["hp_lr"]) for p in by_family["mlp"]}) == 2
    assert all("hp_hidden" not in p for p in by_family["xgboost"])
    assert outcome.promoted and outcome.family in ("xgboost", "mlp")
    best = [p for p in by_family[outcome.family] if all(p[f"hp_{k}"] == str(v) for k, v in outcome.hyperparams.items())]
    assert len(best) == 1  # the model registered is the best trial's


def test_xgboost_refits_the_early_stopped_round_count_on_training_and_validation_rows(
    raw_config: dict, ray_local: str
) -> None:
    from pipelines.core import metrics
    from pipelines.training import families
    from pipelines.training.data import prepare
    from pipelines.training.ray_train import shard_arrays

    raw_config["train"].update(family="xgboost")
    raw_config["train"]["families"]["xgboost"]["params"].update(max_rounds=200, early_stopping_rounds=10)
    config = parse_config(raw_config)
    delta.tables(config).events.append(synthetic.generate(3000, 4))
    prepared = prepare(config)
    datasets = {name: prepared.splits[name].materialize() for name in ("train", "validation")}
    fitted = {}
    for refit in (False, True):
        raw_config["train"]["families"]["xgboost"]["params"]["refit"] = refit
        fitted[refit] = families.fit(
            parse_config(raw_config), "xgboost", datasets, prepared.pipeline, None, name=f"refit-{uuid.uuid4().hex[:6]}"
        )
    best_rounds = fitted[False].history[-1]["best_rounds"]
    assert 1 <= best_rounds < fitted[False].history[-1]["rounds"]  # early stopping chose the count
    for trained in fitted.values():
        assert trained.estimator.booster.num_boosted_rounds() == best_rounds
    # the refitted trees learned from the validation rows: they fit them better than trees that never saw them
    features, labels, _ = shard_arrays(datasets["validation"])
    target = labels.astype(np.int64)
    log_loss = {
        refit: metrics.classification_metric("log_loss", target, trained.estimator.outputs(features))
        for refit, trained in fitted.items()
    }
    assert log_loss[True] < log_loss[False] - 0.01, log_loss


def test_a_small_fit_runs_in_ray_trains_local_mode_and_gives_the_worker_groups_model(
    raw_config: dict, ray_local: str
) -> None:
    from ray.util.state import list_actors

    from pipelines.training import families
    from pipelines.training.data import prepare
    from pipelines.training.ray_train import shard_arrays

    raw_config["train"].update(family="xgboost")
    delta.tables(parse_config(raw_config)).events.append(synthetic.generate(3000, 4))
    prepared = prepare(parse_config(raw_config))
    datasets = {name: prepared.splits[name].materialize() for name in ("train", "validation")}
    scratch = Path(tempfile.gettempdir())

    def fit(local_mode_rows: int) -> tuple:
        raw_config["train"]["local_mode_rows"] = local_mode_rows
        folders = set(scratch.glob("lakeloop-*"))
        trained = families.fit(
            parse_config(raw_config), "xgboost", datasets, prepared.pipeline, None, name=f"local-{uuid.uuid4().hex[:6]}"
        )
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=1000)
        return trained, len(workers), set(scratch.glob("lakeloop-*")) - folders

    in_group, workers_before, left_by_group = fit(0)
    in_process, workers_after, left = fit(50_000)
    assert workers_before >= 1 and workers_after == workers_before  # local mode started no Train worker
    assert left == set() and left_by_group == set()  # the run's checkpoint folder is removed after it
    features, _, _ = shard_arrays(datasets["validation"])
    np.testing.assert_allclose(in_process.estimator.outputs(features), in_group.estimator.outputs(features))
    untimed = [
        [{k: v for k, v in e.items() if k != "train_seconds"} for e in t.history] for t in (in_process, in_group)
    ]
    assert untimed[0] == untimed[1]


@pytest.mark.parametrize("family", ["mlp", "xgboost"])
def test_a_killed_worker_resumes_from_its_checkpoint(tmp_path: Path, family: str) -> None:
    """In a fresh process with its own local cluster, so no state from earlier tests interferes."""
    outcome = run_scenario("tests.integration.kill_and_resume", str(tmp_path / "data"), family, timeout=600)
    assert outcome["killed"], "no train worker was found to kill"
    assert outcome["resumed_from_epoch"] >= 1, "training started over instead of resuming"
    assert outcome["epochs"] == list(range(outcome["reports"]))
    assert outcome["left_folders"] == [], "the killed worker's checkpoints were left on disk"
    if family in QUIET_DRIVER_KINDS:  # a retraining job imports alibi-detect on a thread meanwhile
        assert outcome["imported_during_fit"] == [], "the driver imported modules while Ray Train ran"


def test_training_a_bad_table_fails_validation_before_ray_or_mlflow(raw_config: dict, tmp_path: Path) -> None:
    config = parse_config(raw_config)
    delta.tables(config).events.append(synthetic.generate(300, 1).drop_columns(["contract"]))
    conf = write_config(raw_config, tmp_path / "lakeloop.yaml")
    # Unreachable Ray and MLflow addresses: reaching either would fail differently than validation.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_ADDRESS": "127.0.0.1:9",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "--config", str(conf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "column 'contract': missing from the table" in done.stderr
    assert "Traceback" not in done.stderr


def test_after_a_rollback_a_better_model_can_still_be_promoted(mlflow_server: str) -> None:
    """The old per-version claim wedged here: the claim made when v1 was first replaced outlived the rollback."""
    client = MlflowClient(mlflow_server)
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    first, second, third = _register_dummy_versions(client, name, 3)
    registry = Registry(client, name)
    assert registry.promote(first, registry.state(), GateDecision(True, "first")).promote
    assert registry.promote(second, registry.state(), GateDecision(True, "better")).promote
    assert registry.rollback() == (second, first)
    assert registry.champion().version == first
    decision = registry.promote(third, registry.state(), GateDecision(True, "better than the rolled-back-to"))
    assert decision.promote, decision.reason
    assert registry.champion().version == third and registry.version_by_alias("previous").version == first
    # claims of epochs nobody can claim any more are pruned, so they do not pile up in the Models page
    claims = [m.name for m in client.search_registered_models(filter_string=f"name LIKE '{name}.%'")]
    assert len(claims) == 1, claims


CRASH_MID_PROMOTION = """
import os, signal, sys
from mlflow import MlflowClient
from pipelines.core.gate import GateDecision
from pipelines.adapters.registry import Registry
uri, name, version = sys.argv[1:]
registry = Registry(MlflowClient(uri), name)
Registry._move = lambda self, *args: os.kill(os.getpid(), signal.SIGKILL)  # die after claiming, before the alias
registry.promote(version, registry.state(), GateDecision(True, "better"))
"""


def test_a_promotion_killed_between_claim_and_alias_move_leaves_the_registry_promotable(mlflow_server: str) -> None:
    client = MlflowClient(mlflow_server)
    name = f"crash-{uuid.uuid4().hex[:8]}"
    first, crashed, later = _register_dummy_versions(client, name, 3)
    registry = Registry(client, name, claim_lease_s=6.0)  # the blocked try below must land within it, on a busy machine
    assert registry.promote(first, registry.state(), GateDecision(True, "first")).promote
    done = subprocess.run(
        [sys.executable, "-c", CRASH_MID_PROMOTION, mlflow_server, name, crashed],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == -9, done.stderr[-2000:]
    assert registry.champion().version == first  # claimed, never moved
    claim = client.search_registered_models(filter_string=f"name LIKE '{name}.promotion.1.%'")  # epoch 1: after `first`
    assert [c.tags["lakeloop.claim_holder"] for c in claim] == [f"version {crashed} replaces {first}"]
    # within the lease the claim still blocks (the holder might only be slow) ...
    blocked = registry.promote(later, registry.state(), GateDecision(True, "better"))
    assert not blocked.promote and "another promotion is replacing" in blocked.reason
    # ... and once the lease has run out it is abandoned, and the next promotion goes through
    lease_end = claim[0].creation_timestamp / 1000 + registry.claim_lease_s
    assert wait_for(lambda: time.time() > lease_end, timeout=30)
    decision = registry.promote(later, registry.state(), GateDecision(True, "better"))
    assert decision.promote, decision.reason
    assert registry.champion().version == later


STALL_AFTER_CLAIM = """
import json, os, signal, sys
from mlflow import MlflowClient
from pipelines.core.gate import GateDecision
from pipelines.adapters.registry import Registry
uri, name, version, lease = sys.argv[1:]
take_over = Registry._take_over
def claim_then_stall(self, *args):
    claimed = take_over(self, *args)
    if not isinstance(claimed, str):  # a refusal is a reason; anything else holds the claim
        os.kill(os.getpid(), signal.SIGSTOP)  # a promoter stopped right after it claimed
    return claimed
Registry._take_over = claim_then_stall
registry = Registry(MlflowClient(uri), name, claim_lease_s=float(lease))
decision = registry.promote(version, registry.state(), GateDecision(True, "better"))
print(json.dumps({"promote": decision.promote, "reason": decision.reason}))
"""


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_promoter_stalled_past_its_lease_cannot_overwrite_a_rivals_promotion(mlflow_server: str) -> None:
    """SIGSTOP after claiming, a rival promotes once the lease runs out, SIGCONT: the stalled one refuses."""
    client = MlflowClient(mlflow_server)
    name = f"stall-{uuid.uuid4().hex[:8]}"
    first, stalled, rival = _register_dummy_versions(client, name, 3)
    registry = Registry(client, name, claim_lease_s=3.0)
    assert registry.promote(first, registry.state(), GateDecision(True, "first")).promote
    child = subprocess.Popen(
        [sys.executable, "-c", STALL_AFTER_CLAIM, mlflow_server, name, stalled, str(registry.claim_lease_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert wait_for(lambda: child.poll() is None and _stopped(child.pid), timeout=120), child.poll()
        claim = client.search_registered_models(filter_string=f"name LIKE '{name}.promotion.1.%'")
        lease_end = claim[0].creation_timestamp / 1000 + registry.claim_lease_s
        assert wait_for(lambda: time.time() > lease_end, timeout=30)
        won = registry.promote(rival, registry.state(), GateDecision(True, "better"))
        assert won.promote, won.reason
    finally:
        os.kill(child.pid, signal.SIGCONT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    resumed = json.loads(out)
    assert not resumed["promote"] and "stalled" in resumed["reason"], resumed
    assert registry.champion().version == rival
    assert registry.version_by_alias("previous").version == first
    assert client.get_model_version(name, stalled).tags["lakeloop.gate"] == "refused"


def test_feedback_as_a_source_with_no_labels_yet_trains_on_the_events_table(
    raw_config: dict, mlflow_server: str, ray_local: None
) -> None:
    raw_config["train"].update(source="both")
    config = small_config(raw_config, mlflow_server, max_epochs=1)
    delta.tables(config).events.append(synthetic.generate(1500, 2))
    outcome = train_and_register(config)
    assert outcome.promoted
    assert [t["uri"] for t in outcome.lineage["tables"]] == [delta.tables(config).events.uri]
    assert any("no row of 'predictions' has a label" in n and "trained on the events table" in n for n in outcome.notes)
    run = MlflowClient(mlflow_server).get_run(outcome.run_id)
    assert "trained on the events table" in run.data.tags["lakeloop.notes"]


def test_a_regression_model_trains_registers_gates_and_predicts(
    raw_config: dict, mlflow_server: str, ray_local: None
) -> None:
    """Monthly charges from the other features: the plan sets the mean (45/70/95), the rest is noise
    of SD 12, so the best possible RMSE is about 12 and a constant predictor's about 23."""
    dataset = raw_config["dataset"]
    dataset.update(task="regression", label="monthly_charges")
    dataset.pop("classes")
    dataset["features"] = [f for f in dataset["features"] if f["name"] != "monthly_charges"]
    raw_config["gate"].update(metric="rmse", min_improvement=0.0, thresholds={"rmse": 20.0})
    config = small_config(raw_config, mlflow_server, max_epochs=8, patience=3)
    rows = synthetic.generate(3000, 6).to_pandas().dropna(subset=["monthly_charges"])
    delta.tables(config).events.append(pa.Table.from_pandas(rows, preserve_index=False))
    outcome = train_and_register(config)
    assert outcome.promoted, outcome.reason
    assert outcome.metrics["rmse"] < 16 and outcome.metrics["r2"] > 0.4, outcome.metrics
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{config.mlflow.registered_model}@champion")
    basic, premium = rows.head(1).assign(plan="basic"), rows.head(1).assign(plan="premium")
    predicted = model.predict(pd.concat([basic, premium])[config.dataset.feature_names])["prediction"].to_numpy()
    assert predicted[1] - predicted[0] > 25  # the plans' means are 50 apart
