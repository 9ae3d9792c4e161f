"""The code fingerprint: stable, moved by what shapes a model and by nothing else, and described."""

from __future__ import annotations

from pipelines.core.code_fingerprint import CodeManifest, build_manifest, changes, parse_pins

CONFIG = {
    "dataset": {"table": "events", "features": [{"name": "age", "kind": "numeric"}]},
    "train": {"family": "xgboost", "num_workers": 2, "families": {"xgboost": {"params": {"max_depth": 6}}}},
    "tune": {"num_samples": 2, "max_concurrent_trials": 1},
    "serving": {"alias": "champion"},
    "mlflow": {"tracking_uri": "http://127.0.0.1:5000"},
}
FILES = {"pipelines/train.py": b"print('a')\n", "pipelines/core/gate.py": b"x = 1\n"}
PINS = "# pins\nray[data,train]==2.60.0\ntorch==2.13.0 ; python_version >= '3.11'\nXGBoost_CPU==3.2.0\nnot-pinned>=1\n"


def _with(section: str, key: str, value) -> dict:
    changed = {k: dict(v) for k, v in CONFIG.items()}
    changed[section][key] = value
    return changed


def test_the_same_inputs_give_the_same_fingerprint_in_any_order() -> None:
    one = build_manifest(FILES, PINS, CONFIG)
    two = build_manifest(dict(reversed(list(FILES.items()))), PINS, dict(reversed(list(CONFIG.items()))))
    assert one.fingerprint == two.fingerprint
    assert len(one.fingerprint) == 16


def test_code_model_settings_and_pins_move_it() -> None:
    base = build_manifest(FILES, PINS, CONFIG).fingerprint
    assert build_manifest({**FILES, "pipelines/train.py": b"print('b')\n"}, PINS, CONFIG).fingerprint != base
    assert build_manifest(FILES, PINS.replace("2.13.0", "2.14.0"), CONFIG).fingerprint != base
    deeper = _with("train", "families", {"xgboost": {"params": {"max_depth": 8}}})
    assert build_manifest(FILES, PINS, deeper).fingerprint != base
    assert build_manifest(FILES, PINS, _with("tune", "num_samples", 4)).fingerprint != base


def test_runtime_settings_do_not_move_it() -> None:
    base = build_manifest(FILES, PINS, CONFIG).fingerprint
    assert build_manifest(FILES, PINS, _with("train", "num_workers", 8)).fingerprint == base
    assert build_manifest(FILES, PINS, _with("tune", "max_concurrent_trials", 4)).fingerprint == base
    assert build_manifest(FILES, PINS, _with("serving", "alias", "canary")).fingerprint == base
    assert build_manifest(FILES, PINS, _with("mlflow", "tracking_uri", "http://x:5000")).fingerprint == base


def test_pins_are_parsed_as_pip_compares_names() -> None:
    assert parse_pins(PINS) == {"ray": "2.60.0", "torch": "2.13.0", "xgboost-cpu": "3.2.0"}


def test_changes_name_each_file_pin_and_key() -> None:
    old = build_manifest(FILES, PINS, CONFIG)
    new = build_manifest(
        {"pipelines/train.py": b"print('b')\n", "pipelines/release.py": b""},
        PINS.replace("torch==2.13.0", "torch==2.14.0"),
        _with("train", "families", {"xgboost": {"params": {"max_depth": 8}}}),
    )
    lines = changes(old, new)
    assert "file pipelines/release.py: added" in lines
    assert "file pipelines/core/gate.py: removed" in lines
    assert any(line.startswith("file pipelines/train.py: ") for line in lines)
    assert "pin torch: 2.13.0 -> 2.14.0" in lines
    assert "conf train.families.xgboost.params.max_depth: 6 -> 8" in lines
    assert changes(old, old) == []


def test_a_manifest_survives_its_json() -> None:
    manifest = build_manifest(FILES, PINS, CONFIG)
    again = CodeManifest.from_json(manifest.to_json())
    assert again == manifest and again.fingerprint == manifest.fingerprint
