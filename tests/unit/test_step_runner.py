"""How every step ends: a summary, one JSON document, or one error line (never a traceback)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.errors import ConfigError
from pipelines.step_runner import StepResult, execute
from tests.helpers import ROOT, write_config


@pytest.fixture(autouse=True)
def _no_process_wide_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry invariants set Ray's auth mode for the whole process (a later ray.init in this pytest
    process then disagreed with its own cluster), and the warning handler outlives the test."""
    monkeypatch.setattr("pipelines.step_runner.set_entry_invariants", lambda: None)
    monkeypatch.setattr("pipelines.step_runner._library_warnings", lambda: None)


def _args(tmp_path: Path, raw_config: dict, **flags) -> argparse.Namespace:
    conf = write_config(raw_config, tmp_path / "lakeloop.yaml")
    return argparse.Namespace(config=str(conf), json=False, debug=False, **flags)


def _broken(args: argparse.Namespace, config) -> StepResult:
    return {}["no such key"]  # a bug: KeyError


def test_an_unexpected_error_is_one_line_naming_the_step_and_the_traceback_goes_to_a_file(
    tmp_path: Path, raw_config: dict, capsys: pytest.CaptureFixture
) -> None:
    code = execute(_broken, _args(tmp_path, raw_config), joins_stack=False, step="lakeloop train")
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: lakeloop train failed: KeyError: 'no such key'")
    assert "Traceback" not in err
    log = Path(re.search(r"traceback in (\S+);", err).group(1))
    assert "Traceback (most recent call last)" in log.read_text() and "_broken" in log.read_text()
    assert log.stat().st_mode & 0o077 == 0  # readable by this user only


def test_with_json_the_error_is_the_json_document(
    tmp_path: Path, raw_config: dict, capsys: pytest.CaptureFixture
) -> None:
    args = _args(tmp_path, raw_config)
    args.json = True
    assert execute(_broken, args, joins_stack=False, step="lakeloop status") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and "lakeloop status failed: KeyError" in document["errors"][0]


def test_with_debug_the_traceback_is_shown(tmp_path: Path, raw_config: dict) -> None:
    args = _args(tmp_path, raw_config)
    args.debug = True
    with pytest.raises(KeyError):
        execute(_broken, args, joins_stack=False)


def test_a_user_error_keeps_its_own_exit_code(tmp_path: Path, raw_config: dict, capsys) -> None:
    def bad_config(args, config) -> StepResult:
        raise ConfigError("conf/lakeloop.yaml: train.max_epochs: must be at least 1")

    assert execute(bad_config, _args(tmp_path, raw_config), joins_stack=False) == 2
    assert capsys.readouterr().err == "error: conf/lakeloop.yaml: train.max_epochs: must be at least 1\n"


def _program(source: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_a_program_exits_with_its_code_after_its_output_and_atexit_handlers() -> None:
    done = _program(
        "import atexit, sys\n"
        "from pipelines.step_runner import exit_program\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "print('{\"ok\": true}', end='')\n"  # unflushed, no newline: lost if the stream were not flushed
        "exit_program(3)\n"
    )
    assert (done.returncode, done.stdout, done.stderr.strip()) == (3, '{"ok": true}', "atexit ran")


def test_a_program_with_a_thread_still_running_waits_for_it() -> None:
    done = _program(
        "import threading\n"
        "from pipelines.step_runner import exit_program\n"
        "go = threading.Event()\n"
        "worker = threading.Thread(target=lambda: (go.wait(), print('thread finished')))\n"
        "worker.start()\n"
        "threading.Timer(0.2, go.set).start()\n"
        "exit_program(0)\n"
    )
    assert (done.returncode, done.stdout) == (0, "thread finished\n")


def test_the_training_driver_does_not_import_a_family_it_does_not_train() -> None:
    """torch took 1.1 s of an xgboost retraining job's start; the torch families import it when used."""
    done = _program(
        "import sys, pipelines.training.workflow\nprint(sorted(m for m in ('torch', 'xgboost') if m in sys.modules))"
    )
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
