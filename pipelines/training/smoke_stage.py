"""A release's smoke stage: the candidate deployed as its own Serve application beside the running
ones, answering golden rows with what the model answers in-process and with the champion's output
columns, then fuzzed from its own OpenAPI document (schemathesis: no 5xx). It logs to tables of its
own, so neither its rows nor the fuzzer's labels reach the production log, and it is removed after."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pandas as pd

from pipelines.adapters import ray_serve
from pipelines.adapters.registry import Registry
from pipelines.core.config import LakeloopConfig

SMOKE_APP, SMOKE_ROUTE, SMOKE_ALIAS = "lakeloop-release", "/release-candidate", "candidate"
SMOKE_TABLES = {
    "predictions_table": "release_smoke_predictions",
    "feedback_table": "release_smoke_feedback",
    "labelled_table": "release_smoke_labelled",
}
GOLDEN_ROWS = 20


def smoke_config(config: LakeloopConfig) -> LakeloopConfig:
    """The candidate app's configuration: it follows the candidate alias and logs to its own tables."""
    serving = config.serving
    log = serving.prediction_log.model_copy(update=SMOKE_TABLES)
    return config.model_copy(
        update={"serving": serving.model_copy(update={"alias": SMOKE_ALIAS, "prediction_log": log})}
    )


def output_problems(answered: list[dict], expected: pd.DataFrame, champion_columns: list[str]) -> list[str]:
    """How the served answer to the golden rows differs from the model's in-process answer
    (`expected`) and from the champion's output columns."""
    problems = []
    if len(answered) != len(expected):
        return [f"{len(answered)} predictions for {len(expected)} golden rows"]
    columns = sorted(answered[0]) if answered else []
    if champion_columns and columns != sorted(champion_columns):
        problems.append(f"output columns {columns} differ from the champion's {sorted(champion_columns)}")
    served = pd.DataFrame(answered)
    for column in expected.columns:
        if column not in served:
            problems.append(f"no '{column}' in the served answer")
            continue
        got, want = served[column], expected[column].reset_index(drop=True)
        numeric = pd.api.types.is_numeric_dtype(want) and pd.api.types.is_numeric_dtype(got)
        same = (got - want).abs().le(1e-6).all() if numeric else (got.astype(str) == want.astype(str)).all()
        if not same:
            problems.append(f"'{column}' served differs from the model's in-process answer")
    return problems


def fuzz(url: str, examples: int, api_key: str | None) -> str | None:
    """schemathesis against the app's OpenAPI document: None, or what failed."""
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if binary is None:
        return "schemathesis is not installed where the release runs (pip install 'lakeloop[release]')"
    command = [binary, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--phases", "examples,fuzzing"]
    command += ["--max-examples", str(examples), "--seed", "7", "--generation-database", "none", "--no-color"]
    command += ["--request-timeout", "30"]
    if api_key:
        command += ["--header", f"Authorization: Bearer {api_key}"]
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=600)
    if done.returncode:
        return f"schemathesis found server errors: {done.stdout[-800:]}"
    return None


def _with_this_code(app: dict) -> dict:
    """The app with the release's own code: a job's working_dir (the checkout `ray job submit`
    uploaded) becomes the app's, so its replicas import the new code, not the cluster's."""
    import ray

    working_dir = ray.get_runtime_context().runtime_env.get("working_dir") if ray.is_initialized() else None
    if not working_dir:
        return app
    return {**app, "runtime_env": {**app.get("runtime_env", {}), "working_dir": working_dir}}


def smoke_check(config: LakeloopConfig, dashboard: str, serve_config_path: Path, examples: int = 25):
    """The Check a release passes to training: (version, held-out rows) -> None, or why it failed."""
    registry = Registry.from_config(config)
    api_key = ray_serve.api_key_from_env()
    shipped = ray_serve.with_lakeloop_config(
        ray_serve.load_serve_config(serve_config_path), smoke_config(config), api_key
    )
    app = ray_serve.application(
        shipped,
        SMOKE_APP,
        SMOKE_ROUTE,
        autoscaling_config={"min_replicas": 1, "max_replicas": 1},
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def check(version: str, rows: pd.DataFrame) -> str | None:
        golden = rows.head(GOLDEN_ROWS).reset_index(drop=True)
        expected = registry.load_version(version).predict_frame(golden)
        champion = registry.champion()
        champion_columns = (
            list(registry.load_version(champion.version).predict_frame(golden).columns) if champion else []
        )
        registry.set_alias(SMOKE_ALIAS, version)
        try:
            url = ray_serve.deploy_beside(dashboard, shipped, _with_this_code(app)) + SMOKE_ROUTE
            if not ray_serve.wait_ready(url, config.serving.ready_timeout_s or 120):
                return f"smoke: the candidate app at {url} did not load version {version}"
            body = {"dataframe_records": golden.astype(object).where(golden.notna(), None).to_dict("records")}
            answer = httpx.post(f"{url}/invocations", json=body, headers=headers, timeout=60)
            if answer.status_code != 200:
                return f"smoke: golden rows answered {answer.status_code}: {answer.text[:300]}"
            problems = output_problems(answer.json()["predictions"], expected, champion_columns)
            if problems:
                return "smoke: " + "; ".join(problems)
            failed = fuzz(url, examples, api_key)
            return f"smoke: {failed}" if failed else None
        finally:
            ray_serve.remove_application(dashboard, shipped, SMOKE_APP)
            registry.delete_alias(SMOKE_ALIAS)

    return check
