"""A replica with an online candidate (shadow or canary), on the real replica class with an injected
model source and real local Delta logs, no cluster: who answers, what lands in the shadow log, and a
candidate that fails live never failing a client."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import ERROR, MODEL_VERSION, REQUEST_ID, ROLE
from pipelines.adapters.registry import ModelRef
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.scenarios.synthetic import EXAMPLE_ROW
from serve.app import Pending, in_canary
from serve.schemas import RecordValidator
from tests.fakes import FakeSource, UnbatchedServer


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def server(config: LakeloopConfig, source: FakeSource) -> Iterator[UnbatchedServer]:
    replica = UnbatchedServer(config.model_dump_json(), source)
    yield replica
    replica.close()


def _candidate(source: FakeSource, server: UnbatchedServer, mode: str, percent: float = 0.0) -> None:
    source.candidate = ModelRef("m", "2", "candidate", "run2", online_mode=mode, canary_percent=percent)
    assert server.candidates.check()  # loaded and warmed, as the watcher's next poll would


def _requests(config: LakeloopConfig, n: int) -> list[Pending]:
    columns = RecordValidator(config.dataset, 10).columns([EXAMPLE_ROW, EXAMPLE_ROW])
    return [Pending(uuid.uuid4().hex, columns) for _ in range(n)]


def _serve(server: UnbatchedServer, requests: list[Pending]) -> list:
    """Each request as its own batch, then wait until the shadow thread has scored what they queued."""

    async def run() -> list:
        return [(await server.score_requests([request]))[0] for request in requests]

    answered = asyncio.run(run())
    server.shadow_scorer.join()
    return answered


def _logged(config: LakeloopConfig, server: UnbatchedServer, table: str) -> list[dict]:
    server.close()  # commits what is spooled
    read = getattr(delta.tables(config), table).read()
    return [] if read is None else read.to_pylist()


def test_without_a_candidate_nothing_is_scored_in_shadow(config, server) -> None:
    answered = _serve(server, _requests(config, 5))
    assert {model.ref.version for model, _ in answered} == {"1"}
    assert server.shadow.snapshot()["accepted"] == 0


def test_in_shadow_the_champion_answers_and_the_candidate_rows_share_the_request_ids(config, source, server) -> None:
    _candidate(source, server, "shadow")
    requests = _requests(config, 20)
    answered = _serve(server, requests)
    assert {answer[0]["prediction"] for _, answer in answered} == {"1"}  # FakePredictor answers its version
    served, shadow = _logged(config, server, "predictions"), _logged(config, server, "shadow")
    assert {r[MODEL_VERSION] for r in served} == {"1"} and len(served) == 40
    assert {(r[REQUEST_ID], r["row"]) for r in shadow} == {(r[REQUEST_ID], r["row"]) for r in served}
    assert {(r[MODEL_VERSION], r[ROLE], r["prediction"], r[ERROR]) for r in shadow} == {("2", "candidate", "2", None)}
    assert server.describe_candidate()["role"] == "candidate"


def test_a_canary_answers_its_share_and_the_champion_scores_those_rows_in_shadow(config, source, server) -> None:
    _candidate(source, server, "canary", 50.0)
    requests = _requests(config, 60)
    answered = _serve(server, requests)
    by_request = {r.request_id: model.ref.version for r, (model, _) in zip(requests, answered, strict=True)}
    assert by_request == {r.request_id: "2" if in_canary(r.request_id, 50.0) else "1" for r in requests}
    assert set(by_request.values()) == {"1", "2"}
    shadow = _logged(config, server, "shadow")
    assert {(r[REQUEST_ID], r[MODEL_VERSION], r[ROLE]) for r in shadow} == {
        (rid, "1" if version == "2" else "2", "champion" if version == "2" else "candidate")
        for rid, version in by_request.items()
    }


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_a_candidate_that_raises_live_fails_no_request_and_its_errors_are_logged(config, source, server, mode) -> None:
    source.failing_live.add("2")
    _candidate(source, server, mode, 100 - 1e-9)
    answered = _serve(server, _requests(config, 10))
    assert all(not isinstance(answer, Exception) and answer[0]["prediction"] == "1" for _, answer in answered)
    shadow = _logged(config, server, "shadow")
    assert len(shadow) == 20
    assert all(r[MODEL_VERSION] == "2" and r["prediction"] is None and "cannot score" in r[ERROR] for r in shadow)


def test_the_candidate_is_dropped_when_its_alias_is_removed(config, source, server) -> None:
    _candidate(source, server, "shadow")
    source.candidate = None
    server.candidates.check()
    assert server.candidates.current is None and server.describe_candidate() is None
    _serve(server, _requests(config, 3))
    assert server.shadow.snapshot()["accepted"] == 0


def test_a_full_shadow_queue_drops_shadow_work_and_counts_it(config, source) -> None:
    from serve.metrics import ServingMetrics
    from serve.shadow_scoring import ShadowScorer, ShadowWork

    server = UnbatchedServer(config.model_dump_json(), source)
    try:
        _candidate(source, server, "shadow")
        metrics = ServingMetrics("m", True)
        scorer = ShadowScorer(server.shadow, metrics, max_waiting=1)  # not started: nothing drains yet
        candidate = server.candidates.current
        work = [
            ShadowWork(candidate.ref, candidate.predictor, "candidate", r.request_id, r.columns)
            for r in _requests(config, 2)
        ]
        assert scorer.submit(work[:1]) and not scorer.submit(work[1:])  # the second waits for a full queue: dropped
        scorer.start()
        scorer.join()
        assert server.shadow.snapshot()["accepted"] == 2  # the first request's 2 rows only
    finally:
        scorer.stop()
        server.close()


def test_the_canary_share_of_5000_server_request_ids_is_inside_the_binomial_99_interval() -> None:
    from serve.access import Access

    access = Access.of(None, None, "m")
    chosen = sum(in_canary(access.new_request_id(), 10.0) for _ in range(5000))
    low, high = stats.binom.interval(0.99, 5000, 0.10)
    assert low <= chosen <= high, chosen


def test_the_same_request_id_always_lands_on_the_same_side() -> None:
    ids = [uuid.uuid4().hex for _ in range(200)]
    assert [in_canary(i, 30.0) for i in ids] == [in_canary(i, 30.0) for i in ids]
    assert Counter(in_canary(i, 30.0) for i in ids)[True] > 0


def test_online_gate_config_is_validated(raw_config: dict) -> None:
    from pipelines.core.errors import ConfigError

    raw_config["gate"] = {"online": {"mode": "shadow", "min_pairs": 500, "max_pairs": 100}}
    with pytest.raises(ConfigError, match="min_pairs"):
        parse_config(raw_config)
    raw_config["gate"] = {"online": {"alias": "champion"}}
    with pytest.raises(ConfigError, match="gate.online.alias"):
        parse_config(raw_config)
    raw_config["gate"] = {"online": {"mode": "canary", "canary_percent": 100}}
    with pytest.raises(ConfigError, match="canary_percent"):
        parse_config(raw_config)
    assert np.isclose(parse_config({**raw_config, "gate": {}}).gate.online.alpha, 0.05)


def test_the_margin_applies_only_when_the_champion_is_below_its_floor_and_never_to_a_guard(
    config: LakeloopConfig,
) -> None:
    import json

    import pandas as pd

    from pipelines.adapters.prediction_log import LABEL
    from pipelines.monitoring.online_gate import evidence

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)

    def outputs(accuracy: float) -> list[str]:
        right = rng.random(len(labels)) < accuracy
        return [json.dumps({"prediction": int(y if r else 1 - y)}) for y, r in zip(labels, right, strict=True)]

    pairs = pd.DataFrame({LABEL: labels, "champion_output": outputs(0.6), "candidate_output": outputs(0.6)})

    def floor(thresholds: dict) -> LakeloopConfig:
        return config.model_copy(
            update={"gate": config.gate.model_copy(update={"metric": "accuracy", "thresholds": thresholds})}
        )

    below = evidence(floor({"accuracy": 0.7}), pairs)
    assert below.p_not_worse is not None and below.margin == config.gate.online.failing_champion_margin
    assert evidence(floor({"accuracy": 0.7}), pairs, guard=True).p_not_worse is None  # a rollback needs better
    assert evidence(floor({"accuracy": 0.5}), pairs).p_not_worse is None  # the champion passes its floor
    assert evidence(floor({}), pairs).p_not_worse is None  # no floor for gate.metric


def test_the_drift_report_shows_the_live_comparison_of_the_pass() -> None:
    from pipelines.core.loop_outcomes import OnlineStep
    from pipelines.monitoring.html_report import live_comparison

    step = OnlineStep(
        candidate_version="7",
        champion_version="6",
        mode="canary",
        action="promote",
        reason="online gate (canary): roc_auc 0.8512 vs the champion's 0.8011 on 412 labelled pairs: better <",
        metric="roc_auc",
        pairs=412,
        champion=0.8011,
        candidate=0.8512,
        p_better=0.0012,
        p_worse=0.998,
        looks=2,
        error_rows=0,
        applied=True,
    )
    page = live_comparison(step)
    assert "<td>candidate (canary)</td><td>7</td><td>0.851</td>" in page
    assert "<td>champion</td><td>6</td><td>0.801</td>" in page
    assert "<th>labelled pairs</th><td>412</td>" in page and "<th>p (better)</th><td>0.0012</td>" in page
    assert "<th>decision</th><td>promote</td>" in page and "better &lt;" in page  # the reason, escaped
    assert "not worse by the margin" not in page  # no margin look: the champion was not below its floor
    rival = live_comparison(OnlineStep(**{**vars(step), "applied": False, "mode": "guard", "action": "rollback"}))
    assert "guard (the replaced champion)" in rival and "rollback (not applied)" in rival
    assert "no online candidate was set" in live_comparison(None)


def test_the_monitors_metrics_count_the_online_gates_applied_decisions_by_action() -> None:
    from prometheus_client import generate_latest

    from pipelines.adapters.prometheus import MonitorMetrics
    from pipelines.core.loop_outcomes import MonitorPass, OnlineStep, RetrainingStep

    quiet = RetrainingStep("ok", "none", "", None, False, 0, None)
    metrics = MonitorMetrics()

    def looked(action: str, applied: bool) -> MonitorPass:
        step = OnlineStep("2", "1", "guard", action, "", "roc_auc", 300, 0.8, 0.7, 0.01, 0.99, 1, 0, applied=applied)
        return MonitorPass("1", [], [], 0, 0, 0, False, False, quiet, {}, online=step)

    for action, applied in (("rollback", True), ("rollback", False), ("wait", False)):
        metrics.passed(looked(action, applied))
    text = generate_latest(metrics.registry).decode()
    assert 'lakeloop_monitor_online_decisions_total{action="rollback"} 1.0' in text  # a rival's rollback: not ours
    assert 'action="wait"' not in text
