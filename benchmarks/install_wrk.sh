#!/usr/bin/env bash
# wrk drives the HTTP benchmark: a Python load generator on the same 2 CPUs caps what a server can
# show (94 req/s at c=32 where wrk measured 433 against the same endpoint). Debian/Ubuntu: apt.
set -euo pipefail
command -v wrk >/dev/null && exit 0
if ! command -v apt-get >/dev/null; then
  echo "wrk is not installed and there is no apt-get here: install wrk (https://github.com/wg/wrk), then rerun" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get install -y --no-install-recommends wrk >/dev/null ||
  { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends wrk >/dev/null; }
command -v wrk
