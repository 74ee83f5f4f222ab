#!/usr/bin/env bash
# Runs every test: installs the real Swift clients the tests drive (python-swiftclient, rclone) (idempotent, quiet), then
# the whole cargo test suite with those clients required. This is the README's test command
# and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v swift >/dev/null 2>&1 || need_apt+=(python3-swiftclient)
command -v rclone >/dev/null 2>&1 || need_apt+=(rclone)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq >/dev/null
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

export SWIFTGATE_REQUIRE_CLIENTS=1
cargo test --all-targets
