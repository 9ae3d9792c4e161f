"""Online features on the embedded store (real local Delta tables, the real replica class and API, an
injected model source, no cluster): `lakeloop features materialize` writes each view's latest values,
a replica looks them up by entity key, logs what the model saw, counts misses, and refuses a wrong key
type for that request only."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from pipelines import features as features_step
from pipelines.adapters import delta
from pipelines.adapters.online_store import DeltaOnlineStore
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.core.errors import ConfigError
from pipelines.feature_tables.materialize import materialize
from pipelines.monitoring import check
from pipelines.scenarios.feature_tables import TABLES, USAGE_COLUMNS, FeatureTables, feature_tables
from serve.app import create_api
from tests.fakes import FakeSource, UnbatchedServer
from tests.helpers import customers_of, landed_feature_tables, newest_event, offline_values

CUSTOMERS = 60


@pytest.fixture
def tables() -> FeatureTables:
    return feature_tables(240, 3, customers=CUSTOMERS)


@pytest.fixture
def online(raw_config: dict, tables: FeatureTables) -> LakeloopConfig:
    """The worked example's tables landed (the embedded online store)."""
    return landed_feature_tables(raw_config, tables)


@pytest.fixture
def server(online: LakeloopConfig, tables: FeatureTables) -> Iterator[UnbatchedServer]:
    materialize(online, newest_event(tables))
    replica = UnbatchedServer(online.model_dump_json(), FakeSource())
    yield replica
    replica.close()


@pytest.fixture
def client(online: LakeloopConfig, server: UnbatchedServer) -> TestClient:
    api = create_api(online, server.access)
    api.state.server, api.state.metrics = server, server.metrics
    return TestClient(api)


def test_a_lookup_equals_the_offline_as_of_value_at_the_materialization_time(
    online: LakeloopConfig, tables: FeatureTables
) -> None:
    at = newest_event(tables) - timedelta(minutes=20)  # some customers' newest rows are not yet visible then
    written = materialize(online, at)
    assert [m.view for m in written] == ["profile", "usage"]
    customers = customers_of(tables)
    expected = offline_values(online, tables, at, customers)
    numeric = set(online.dataset.numeric)
    store = DeltaOnlineStore(online)
    for view in online.features.views:
        reader = store.reader(view, numeric)
        assert reader.refresh(), reader.last_error
        assert reader.version == written[0 if view.name == "profile" else 1].version
        found = reader.lookup_now([(c,) for c in customers])
        for column in view.columns:
            want = expected[column].to_numpy()
            if column in numeric:
                np.testing.assert_array_equal(found.values[column], want.astype(float), err_msg=column)
            else:
                assert [None if v != v else v for v in want] == found.values[column].tolist(), column
        assert found.hit.sum() == expected[view.columns[0]].notna().sum() > 0
    corrected = expected["monthly_charges"].notna().sum()
    assert 0 < corrected <= len(customers)


def test_the_replica_looks_up_by_key_and_logs_the_row_the_model_saw(
    online: LakeloopConfig, tables: FeatureTables, client: TestClient, server: UnbatchedServer
) -> None:
    customers = customers_of(tables)[:9]
    answer = client.post("/predict", json={"records": [{"customer_id": c} for c in [*customers, "nobody"]]})
    assert answer.status_code == 200, answer.text
    described = client.get("/model").json()["features"]
    assert described["profile"]["lookups"] == {"hit": 9, "miss": 1}
    server.close()  # commits what is spooled
    logged = delta.tables(online).predictions.read().to_pandas().sort_values("row")
    assert logged["customer_id"].tolist() == [*customers, "nobody"]
    expected = offline_values(online, tables, newest_event(tables), customers)
    for column in online.dataset.feature_names:
        got, want = logged[column].tolist()[:9], expected[column].tolist()
        if column in online.dataset.numeric:
            np.testing.assert_allclose(got, want, err_msg=column)
        else:
            assert got == [None if v != v else str(v) for v in want], column
        assert logged[column].isna().iloc[9], f"{column}: a missing entity's value is missing (imputed)"
    # the monitor's windows are of these rows: drift is checked on the looked-up features
    monitored = parse_config({**online.model_dump(), "monitor": {**online.monitor.model_dump(), "window_rows": 10}})
    window = check._traffic(monitored).windows[0].rows.sort_values("row")
    np.testing.assert_allclose(window["monthly_charges"].iloc[:9], logged["monthly_charges"].iloc[:9])


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"customer_id": 42}, "records[0].customer_id: view 'profile' keys are text; got 42"),
        ({"customer_id": "C1", "age": 30}, "'age': looked up by customer_id"),
        ({}, "records[0].customer_id: Field required"),
    ],
)
def test_a_wrong_key_is_a_422_naming_it_and_another_clients_request_still_answers(
    client: TestClient, tables: FeatureTables, record: dict, named: str
) -> None:
    refused = client.post("/predict", json={"records": [record]})
    assert refused.status_code == 422 and named in refused.json()["error"], refused.text
    good = client.post("/invocations", json={"dataframe_records": [{"customer_id": customers_of(tables)[0]}]})
    assert good.status_code == 200, good.text


def test_the_replica_follows_a_new_materialization_and_keeps_its_version_through_a_bad_one(
    online: LakeloopConfig, tables: FeatureTables, client: TestClient, server: UnbatchedServer
) -> None:
    customer = customers_of(tables)[0]
    before = client.post("/predict", json={"records": [{"customer_id": customer}]}).json()["request_id"]
    later = newest_event(tables) + timedelta(days=1)
    correction = pa.Table.from_pylist(
        [
            {
                "customer_id": customer,
                "day": later - timedelta(hours=1),
                "computed_at": later - timedelta(minutes=1),
                **dict.fromkeys(USAGE_COLUMNS, 1234.0),
            }
        ],
        tables.usage.schema,
    )
    delta.tables(online).named(TABLES["usage"]).append(correction)
    materialize(online, later)
    server.features.refresh()  # what the refresh thread does every refresh_interval_s
    assert client.get("/model").json()["features"]["usage"]["version"] == 1
    after = client.post("/predict", json={"records": [{"customer_id": customer}]})
    # a view whose online table lost a column: refused on refresh, the version held keeps serving
    usage = DeltaOnlineStore(online).table(online.features.views[1])
    usage.overwrite(usage.read().drop_columns(["support_calls"]))
    server.features.refresh()
    state = client.get("/model").json()["features"]["usage"]
    assert state["version"] == 1 and "no column support_calls" in state["last_error"]
    still = client.post("/predict", json={"records": [{"customer_id": customer}]})
    assert still.status_code == 200
    server.close()
    logged = delta.tables(online).predictions.read().to_pandas().set_index("request_id")
    assert logged.loc[before, "monthly_charges"] != 1234.0
    assert logged.loc[after.json()["request_id"], "monthly_charges"] == 1234.0
    assert logged.loc[still.json()["request_id"], "support_calls"] == 1234.0


def test_materialize_refuses_a_view_table_without_a_configured_column(
    online: LakeloopConfig, tables: FeatureTables
) -> None:
    raw = online.model_dump()
    raw["features"]["views"][1]["columns"] = [*USAGE_COLUMNS, "data_gb"]
    changed = parse_config(raw)
    with pytest.raises(ConfigError, match=r"features.views 'usage' \(.*daily_usage\) has no column data_gb"):
        features_step.run(argparse.Namespace(action="materialize"), changed)
    assert not DeltaOnlineStore(changed).table(changed.features.views[0]).exists()  # nothing half written


def test_materialize_reports_each_view(online: LakeloopConfig) -> None:
    outcome = features_step.run(argparse.Namespace(action="materialize"), online)
    views = outcome.data["views"]
    assert [v["view"] for v in views] == ["profile", "usage"]
    assert views[0]["entities"] == CUSTOMERS and views[0]["version"] == 0
    assert datetime.fromisoformat(views[0]["as_of"]) <= datetime.now(UTC)
