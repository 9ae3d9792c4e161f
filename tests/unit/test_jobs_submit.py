"""Jobs.submit's answer when a submit's reply is lost: the job it created is still its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests

from pipelines.adapters.jobs import Jobs
from pipelines.core.service_retries import ServiceUnavailable


class JobsApi:
    """The Jobs API's submit semantics: one job per id; `lose_replies` submits create the job and
    then time out before answering, as an overloaded dashboard does."""

    def __init__(self, lose_replies: int = 0) -> None:
        self.jobs: dict[str, dict] = {}
        self.lose_replies = lose_replies

    def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata) -> str:
        if submission_id in self.jobs:
            raise RuntimeError(f"status code 500: Job with submission_id {submission_id} already exists.")
        self.jobs[submission_id] = dict(metadata)
        if self.lose_replies:
            self.lose_replies -= 1
            raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=5.0)")
        return submission_id

    def get_job_info(self, submission_id):
        return SimpleNamespace(metadata=self.jobs[submission_id])


def submit(api: JobsApi, retries: int = 3) -> bool:
    jobs = Jobs("http://jobs.invalid", retries=retries, client=api)
    return jobs.submit("python -m pipelines.train", "lakeloop-retrain-1", {}, {"lakeloop.attempt": "1"})


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipelines.core.service_retries.time.sleep", lambda _s: None)


def test_a_submit_whose_reply_timed_out_is_recognised_as_its_own_on_the_retry() -> None:
    api = JobsApi(lose_replies=1)
    assert submit(api) is True
    assert len(api.jobs) == 1


def test_a_job_another_submitter_created_first_is_not_claimed() -> None:
    api = JobsApi()
    assert submit(api) is True
    assert submit(api) is False
    assert len(api.jobs) == 1


def test_a_lost_reply_without_retries_left_is_reported_with_the_service() -> None:
    with pytest.raises(ServiceUnavailable, match="Jobs API at http://jobs.invalid.*timed out"):
        submit(JobsApi(lose_replies=1), retries=1)
