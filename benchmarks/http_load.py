"""HTTP load with wrk (Debian's `wrk`; cluster/install_debian.sh wrk installs it): POST one JSON body
over `concurrency` keep-alive connections for `seconds`, then req/s, p50/p99 and failed requests."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: run cluster/install_debian.sh wrk (make bench runs it)")
    return found


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * UNITS[unit]


def parse(output: str) -> dict:
    """wrk --latency's report: requests, req/s, p50/p99 latency (ms), non-2xx and socket errors."""
    percentiles = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)(?:\.\d+)?%\s+(\S+)\s*$", output, re.M)}
    if set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"wrk reported no latencies (no request answered?):\n{output}")
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": percentiles["50"],
        "p99_ms": percentiles["99"],
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket.groups())) if socket else 0),
    }


def load(url: str, body: str, concurrency: int, seconds: float) -> dict:
    """One wrk run; a timeout of 10 s per request counts as an error."""
    script = f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "post.lua"
        path.write_text(script)
        done = subprocess.run(
            [
                require_wrk(),
                f"-t{min(2, concurrency)}",
                f"-c{concurrency}",
                f"-d{seconds:g}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    return {"concurrency": concurrency, **parse(done.stdout)}
