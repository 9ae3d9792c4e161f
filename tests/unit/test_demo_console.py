"""The demo's console: the story, then the summary; the chatter (during and after the story) goes to
its log, unless the story ends in an error, whose message reaches the console."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

# A process as `lakeloop demo --json` runs: stdout redirected to stderr for the run (the step runner),
# chatter on both streams during the story, a story line on the console, then the JSON summary on
# stdout and late chatter on stderr (a finaliser, a redrawn progress bar).
PROGRAM = """
import contextlib, os, sys
from pathlib import Path
from pipelines.scenarios.whole_loop import console_to_log
fail = sys.argv[2] == "fail"
try:
    with contextlib.redirect_stdout(sys.stderr), console_to_log(Path(sys.argv[1])) as console:
        print("chatter on stdout")
        print("chatter on stderr", file=sys.stderr)
        os.system("echo chatter of a child >&2")
        print("[stage] story", file=console, flush=True)
        if fail:
            raise RuntimeError("broken")
except RuntimeError:
    print("error: broken", file=sys.stderr)
    sys.exit(1)
print("the summary")
print("late chatter", file=sys.stderr)
"""


def _run(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "demo.log"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(log), mode], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    return done, log.read_text()


def test_only_the_story_and_the_summary_reach_the_console_and_the_late_chatter_goes_to_the_log(
    tmp_path: Path,
) -> None:
    done, log = _run(tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the summary\n"
    assert done.stderr == "[stage] story\n"
    for chatter in ("chatter on stdout", "chatter on stderr", "chatter of a child", "late chatter"):
        assert chatter in log


def test_a_story_that_ends_in_an_error_shows_the_error_on_the_console(tmp_path: Path) -> None:
    done, log = _run(tmp_path, "fail")
    assert done.returncode == 1
    assert done.stderr == "[stage] story\nerror: broken\n"
    assert "chatter on stderr" in log and "error: broken" not in log
