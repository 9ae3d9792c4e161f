"""Autoscaling with Ray's fake multi-node provider and token auth: a job submitted without the token
is refused; a job (with it) that needs more CPUs than the head has gets worker nodes from the
autoscaler, which removes them once idle. Own process and cluster."""

from __future__ import annotations

import pytest

from tests.helpers import run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_token_auth_refuses_a_bare_submission_and_the_autoscaler_serves_a_real_job() -> None:
    facts = run_scenario("tests.integration.autoscaling_scenario", timeout=600)
    assert facts["submission_without_token"] in (401, 403) and not facts["refused_job_listed"]
    assert facts["nodes_at_start"] == 1
    assert facts["job_status"] == "SUCCEEDED"
    assert facts["nodes_at_peak"] == 3 and facts["task_nodes"] == 3  # two workers were added and used
    assert facts["nodes_after_idle"] == 1  # and removed once idle
    assert facts["stopped_processes"] > 0
