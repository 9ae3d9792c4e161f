"""Hyperparameter search with Ray Tune (ASHA); each trial drives its own TorchTrainer (the training
loop's, imported from pipelines.training.loop: the search imports training, never the reverse).

Trials log to MLflow child runs of the job's parent run. Ray Train V2 reports to Tune through
`TuneReportCallback`; the trial function asks for almost no CPU so its workers can have them.
"""

from __future__ import annotations

from mlflow import MlflowClient
from ray import tune
from ray.train import Checkpoint
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from pipelines.core.config import HyperParams, LakeloopConfig, SearchDomain
from pipelines.core.errors import LakeloopError
from pipelines.core.network import NetworkSpec
from pipelines.training import loop

# The trial function only waits on its TorchTrainer; Tune refuses a zero request, so ask for a sliver.
TRIAL_DRIVER_CPU = 0.01


def _domain(domain: SearchDomain):
    low, high = (domain.values + [None, None])[:2]
    return {
        "loguniform": lambda: tune.loguniform(low, high),
        "uniform": lambda: tune.uniform(low, high),
        "randint": lambda: tune.randint(int(low), int(high)),
        "choice": lambda: tune.choice(domain.values),
    }[domain.kind]()


def param_space(config: LakeloopConfig) -> dict:
    return {name: _domain(domain) for name, domain in config.tune.search_space.items()}


def _trial(
    params: dict, config_json: str, datasets: dict, input_dim: int, parent_run_id: str | None, stats: loop.TrainStats
) -> None:
    config = LakeloopConfig.model_validate_json(config_json)
    hp = HyperParams(**{**config.train.hyperparams.model_dump(), **params})
    client = MlflowClient(config.mlflow.tracking_uri)
    run_id = None
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        trial_name = tune.get_context().get_trial_name()
        child = client.create_run(
            parent.info.experiment_id, run_name=trial_name, tags={"mlflow.parentRunId": parent_run_id}
        )
        run_id = child.info.run_id
        for key, value in hp.model_dump().items():
            client.log_param(run_id, f"hp_{key}", value)
    cfg = loop.loop_config(config, hp, input_dim, run_id, stats)
    trainer = loop.build_trainer(
        config, cfg, datasets, name=f"{tune.get_context().get_trial_id()}", callbacks=[TuneReportCallback()]
    )
    try:
        trainer.fit()
    finally:
        if run_id:
            client.set_terminated(run_id)


def search(
    config: LakeloopConfig, datasets: dict, input_dim: int, parent_run_id: str | None
) -> tuple[loop.TrainedNetwork, dict]:
    """Run the search; return the best trial's network (best epoch) and its hyperparameters."""
    monitor, mode = loop.monitor_metric(config)
    stats = loop.train_stats(datasets["train"], config.dataset.task)
    trainable = tune.with_parameters(
        _trial,
        config_json=config.model_dump_json(),
        datasets=datasets,
        input_dim=input_dim,
        parent_run_id=parent_run_id,
        stats=stats,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPU}),
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            metric=monitor,
            mode=mode,
            num_samples=config.tune.num_samples,
            max_concurrent_trials=config.tune.max_concurrent_trials,
            scheduler=ASHAScheduler(
                max_t=config.train.max_epochs,
                # ASHA asserts grace_period <= max_t; a retry that escalates to a search runs with the
                # training's max_epochs, which may be below tune.grace_period
                grace_period=min(config.tune.grace_period, config.train.max_epochs),
                reduction_factor=config.tune.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(name=f"tune-{(parent_run_id or 'adhoc')[:8]}", **loop.storage(config)),
    )
    best = tuner.fit().get_best_result(metric=monitor, mode=mode, scope="all")
    path = (best.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if best.error or not path:
        raise LakeloopError(f"tuning produced no usable trial: {best.error or 'no checkpoint reported'}")
    hp = HyperParams(**{**config.train.hyperparams.model_dump(), **best.config})
    spec = NetworkSpec(**loop.loop_config(config, hp, input_dim, None, stats)["network"])
    return loop.network_from_checkpoint(Checkpoint(path), spec), hp.model_dump()
