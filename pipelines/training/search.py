"""Hyperparameter search with Ray Tune (ASHA) across model families: `tune.num_samples` trials of each
family in `tune.families`, each sampling that family's `search_space` and driving the family's own Ray
Train trainer
(imported through pipelines.training.families: the search imports training, never the reverse).

Trials log to MLflow child runs of the job's parent run. Ray Train V2 reports to Tune through
`TuneReportCallback`; the trial function asks for almost no CPU so its workers can have them.
"""

from __future__ import annotations

from mlflow import MlflowClient
from ray import tune
from ray.train import Checkpoint
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from pipelines.core.config import LakeloopConfig, SearchDomain
from pipelines.core.errors import LakeloopError
from pipelines.core.estimators import Trained
from pipelines.training import families, ray_train
from pipelines.training.features import FeaturePipeline

# The trial function only waits on its trainer; Tune refuses a zero request, so ask for a sliver.
TRIAL_DRIVER_CPU = 0.01
FAMILY_KEY = "family"


def _domain(domain: SearchDomain):
    low, high = (domain.values + [None, None])[:2]
    return {
        "loguniform": lambda: tune.loguniform(low, high),
        "uniform": lambda: tune.uniform(low, high),
        "randint": lambda: tune.randint(int(low), int(high)),
        "choice": lambda: tune.choice(domain.values),
    }[domain.kind]()


def searched_families(config: LakeloopConfig) -> list[str]:
    return config.tune.families or [config.train.family]


def param_space(config: LakeloopConfig) -> dict:
    """Every searched family (a grid: tune.num_samples trials each), then `<family>.<setting>` sampled
    from each family's space (a trial reads its own family's)."""
    names = searched_families(config)
    space: dict = {FAMILY_KEY: tune.grid_search(names) if len(names) > 1 else names[0]}
    for name in names:
        for key, domain in config.train.families[name].search_space.items():
            space[f"{name}.{key}"] = _domain(domain)
    return space


def trial_overrides(params: dict) -> tuple[str, dict]:
    """A trial's family and the settings it sampled for that family."""
    family = params[FAMILY_KEY]
    prefix = f"{family}."
    return family, {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


def without_worker_restarts(config: LakeloopConfig) -> LakeloopConfig:
    """A trial's Train run does not restart its worker group. When ASHA stops a trial its workers die
    with it, and a controller that restarts them reserves a new placement group just before it is
    killed too; nothing removes that group. In a CI run one trial's 1-CPU group was left reserved and
    the next trial's worker group waited on it until Ray Train's startup timeout, then retried without
    end. A trial whose worker fails fails; the search goes on with the others."""
    return config.model_copy(update={"train": config.train.model_copy(update={"max_failures": 0})})


def _trial(
    params: dict, config_json: str, datasets: dict, pipeline: FeaturePipeline, parent_run_id: str | None
) -> None:
    config = without_worker_restarts(LakeloopConfig.model_validate_json(config_json))
    family, overrides = trial_overrides(params)
    client = MlflowClient(config.mlflow.tracking_uri)
    run_id = None
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        trial_name = tune.get_context().get_trial_name()
        child = client.create_run(
            parent.info.experiment_id, run_name=trial_name, tags={"mlflow.parentRunId": parent_run_id}
        )
        run_id = child.info.run_id
        client.log_param(run_id, "family", family)
        for key, value in config.train.families[family].settings(overrides).items():
            client.log_param(run_id, f"hp_{key}", value)
    try:
        families.fit(
            config,
            family,
            datasets,
            pipeline,
            run_id,
            name=f"{tune.get_context().get_trial_id()}",
            overrides=overrides,
            callbacks=[TuneReportCallback()],
        )
    finally:
        if run_id:
            client.set_terminated(run_id)


def search(config: LakeloopConfig, datasets: dict, pipeline: FeaturePipeline, parent_run_id: str | None) -> Trained:
    """Run the search; return the best trial's estimator (its best report) and its settings."""
    monitor, mode = ray_train.monitor_metric(config)
    trainable = tune.with_parameters(
        _trial,
        config_json=config.model_dump_json(),
        datasets=datasets,
        pipeline=pipeline,
        parent_run_id=parent_run_id,
    )
    max_t = max(families.reports(config, name) for name in searched_families(config))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPU}),
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            metric=monitor,
            mode=mode,
            num_samples=config.tune.num_samples,
            max_concurrent_trials=config.tune.max_concurrent_trials,
            # ASHA asserts grace_period <= max_t; a retry that escalates to a search may run with fewer
            # epochs than tune.grace_period
            scheduler=ASHAScheduler(
                max_t=max_t,
                grace_period=min(config.tune.grace_period, max_t),
                reduction_factor=config.tune.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(name=f"tune-{(parent_run_id or 'adhoc')[:8]}", **ray_train.storage(config)),
    )
    best = tuner.fit().get_best_result(metric=monitor, mode=mode, scope="all")
    path = (best.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if best.error or not path:
        raise LakeloopError(f"tuning produced no usable trial: {best.error or 'no checkpoint reported'}")
    family, overrides = trial_overrides(best.config)
    settings = config.train.families[family].settings(overrides)
    filesystem = ray_train.storage(config)["storage_filesystem"]
    return families.trained_from(config, family, settings, Checkpoint(path, filesystem=filesystem))
