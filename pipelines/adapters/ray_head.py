"""A Ray head owned by one process: `lakeloop stack up` runs this in the background.

The cluster lives exactly as long as this process; SIGTERM shuts it down cleanly, so stopping the
stack never has to stop Ray machine-wide (that would end every Ray process on the host).

    python -m pipelines.adapters.ray_head --address-file PATH [--num-cpus N] [--dashboard-port 8265]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

import ray

from pipelines.adapters.ray_cluster import secure_auth_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.adapters.ray_head")
    parser.add_argument("--address-file", type=Path, required=True)
    parser.add_argument("--num-cpus", type=int)
    parser.add_argument("--dashboard-port", type=int, default=8265)
    args = parser.parse_args(argv)
    context = ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=args.dashboard_port,
        logging_level=logging.WARNING,
        namespace="lakeloop",
    )
    secure_auth_token()
    info = {"gcs_address": context.address_info["gcs_address"], "dashboard_url": f"http://{context.dashboard_url}"}
    # After ray.init: Ray's core worker installs its own SIGTERM handler, which would replace ours.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    args.address_file.write_text(json.dumps(info))
    stop.wait()
    ray.shutdown()


if __name__ == "__main__":
    main()
