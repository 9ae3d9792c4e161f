"""Write lakeloop's HAProxy wrapper for Serve and print its path: on a cluster node, set
RAY_SERVE_HAPROXY_BINARY_PATH to it before `ray start` (cluster/Dockerfile and cluster/aws.yaml do).

    python -m pipelines.loopback_haproxy [DIRECTORY]     # default: ~/.lakeloop

Ray 2.60's HAProxy ingress binds its stats page (8404) and Prometheus exporter (9101) on every
interface and opens its admin socket with mode 666; the wrapper rewrites the config Ray generates to
bind them on 127.0.0.1 and make the socket 600, then runs the real HAProxy.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from pipelines.adapters.ray_serve import loopback_haproxy

    parser = argparse.ArgumentParser(prog="python -m pipelines.loopback_haproxy", description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, help="where to write it (default: ~/.lakeloop)")
    print(loopback_haproxy(parser.parse_args(argv).directory))


if __name__ == "__main__":
    main()
