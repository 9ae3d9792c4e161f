#!/usr/bin/env bash
# Debian packages lakeloop's tests and benchmarks run, each installed only when its command is missing:
#   cluster/install_debian.sh redis-server   (make setup: the online store's tests start a real one)
#   cluster/install_debian.sh wrk            (make bench: a Python load generator on the same 2 CPUs
#                                             caps what a server can show: 94 req/s at c=32 where wrk
#                                             measured 433 against the same endpoint)
set -euo pipefail
missing=()
for package in "$@"; do
  command -v "$package" >/dev/null || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "${missing[*]}: not installed and there is no apt-get here: install them, then rerun" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
  { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
for package in "${missing[@]}"; do command -v "$package"; done
