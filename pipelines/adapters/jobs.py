"""The Ray Jobs API: submit a job once per id, read its state, wait for it to end.

Every request has a timeout (Ray's client has none: a Jobs API that accepts the connection and
never answers would hang the monitor forever) and is retried `retries` times.

A submit whose answer timed out may still have created the job (seen in the fault suite: with
three monitors on 2 cores one submit took over 5 s). Each submit therefore carries a token of its
own in the job's metadata; when the retry is refused with "already exists", the token tells
"my earlier try landed" (submitted) from "another monitor was first" (not submitted).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from pipelines.core.service_retries import ServiceUnavailable, with_retries

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
REQUEST_TIMEOUT_S = 30.0
SUBMITTER_KEY = "lakeloop.submitter"


@dataclass(frozen=True)
class JobState:
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str
    entrypoint: str

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class Jobs:
    def __init__(self, address: str, retries: int = 3, timeout_s: float = REQUEST_TIMEOUT_S, client=None) -> None:
        """client: a JobSubmissionClient to use instead of connecting to address (tests inject one)."""
        self.address, self.retries, self.timeout_s = address, retries, timeout_s
        self._client = client

    def _connect(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            timeout = self.timeout_s

            class _Client(JobSubmissionClient):
                def _do_request(self, method, endpoint, **kwargs):
                    kwargs.setdefault("timeout", timeout)
                    return super()._do_request(method, endpoint, **kwargs)

            self._client = with_retries(
                f"connecting to the Ray Jobs API at {self.address}", self.retries, lambda: _Client(self.address)
            )
        return self._client

    def submit(self, entrypoint: str, submission_id: str, env: dict[str, str], metadata: dict[str, str]) -> bool:
        """True if this call submitted the job (possibly on a retry after a timed-out answer); False if
        another submitter created a job with this id first."""
        client = self._connect()
        token = uuid.uuid4().hex
        metadata = {**metadata, SUBMITTER_KEY: token}

        def submit() -> bool:
            try:
                client.submit_job(
                    entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": env}, metadata=metadata
                )
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    return (client.get_job_info(submission_id).metadata or {}).get(SUBMITTER_KEY) == token
                raise
            return True

        return with_retries(f"submitting {submission_id} to the Ray Jobs API at {self.address}", self.retries, submit)

    def state(self, submission_id: str) -> JobState | None:
        """The job's state, or None if the Jobs API does not know the id."""
        client = self._connect()

        def read() -> JobState | None:
            try:
                info = client.get_job_info(submission_id)
            except RuntimeError as exc:
                if "status code 404" in str(exc):
                    return None
                raise
            return JobState(str(info.status.value), info.message or "", info.entrypoint or "")

        return with_retries(f"reading the state of job {submission_id}", self.retries, read)

    def stop(self, submission_id: str) -> bool:
        """Ask the Jobs API to stop the job; False if it had already ended."""
        client = self._connect()
        return with_retries(f"stopping job {submission_id}", self.retries, lambda: bool(client.stop_job(submission_id)))

    def logs(self, submission_id: str) -> str:
        client = self._connect()
        return with_retries(
            f"reading the logs of job {submission_id}", self.retries, lambda: client.get_job_logs(submission_id)
        )

    def wait(self, submission_id: str, timeout_s: float, poll_s: float = 0.5) -> JobState:
        """Poll until the job ends; ServiceUnavailable if it is unknown or still running at the timeout.
        A poll is one GET of a few ms on the dashboard; every 2 s added 1 s on average to a followed job."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state(submission_id)
            if state is None:
                raise ServiceUnavailable(f"job {submission_id} is unknown to the Ray Jobs API at {self.address}")
            if state.finished:
                return state
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"job {submission_id} still {state.status} after {timeout_s:.0f} s")
            time.sleep(poll_s)
