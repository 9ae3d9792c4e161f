"""The loop: time from drifted traffic to the new model serving, by stage, from a real
`lakeloop demo` run (embedded stack, Jobs API, Serve).

    python -m benchmarks.loop

Stages: detect (the monitor's checks of the drifted windows, reports written), submit (the Jobs
API call), train (the retraining job's prepare + fit + evaluation, from its own timings), gate
(champion scoring, registration, promotion), swap (from the job's end until the endpoint answers
with the new version), and the job's start-up (the job's wall time not covered by its stages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, write_result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LAKELOOP_STORAGE_ROOT": str(Path(tmp) / "data")}
        done = subprocess.run(
            [str(Path(sys.executable).parent / "lakeloop"), "demo", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    if done.returncode:
        raise SystemExit(f"lakeloop demo failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    stages = {s["stage"]: s["seconds"] for s in summary["stages"]}
    job = summary["retrained"]["stages"]
    inside = sum(job.values())
    loop = {
        "detect": summary["monitor_seconds"]["detect"],
        "submit": summary["monitor_seconds"]["submit"],
        "job start-up": stages["retraining job"] - inside,
        "train (prepare + fit + evaluate)": job["prepare"] + job["fit"] + job["evaluate"],
        "gate (score champion, register, promote)": job["gate"],
        "swap": stages.get("swap", float("nan")),
    }
    total = sum(loop.values())
    lines = ["| stage | seconds | share |", "| --- | --- | --- |"]
    lines += [f"| {name} | {seconds:.1f} | {seconds / total:.0%} |" for name, seconds in loop.items()]
    lines.append(f"| **drifted traffic checked -> new model serving** | **{total:.1f}** | |")
    lines.append(f"demo end to end: {sum(stages.values()):.0f} s; failed requests: {summary['failed_requests']}")
    write_result(
        "loop", {"stages": loop, "total_s": total, "demo_stages": stages, "failed_requests": summary["failed_requests"]}
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
