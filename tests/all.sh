#!/usr/bin/env bash
# Runs every test: installs what the tests drive (python-swiftclient, rclone, duplicity, restic,
# a real OpenStack Swift and memcached, all Debian packages; idempotent and quiet), runs the
# cargo test suite with those clients required, then the real-Swift compatibility suite
# (tests/compat). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in swift:python3-swiftclient rclone:rclone duplicity:duplicity restic:restic curl:curl \
            memcached:memcached swift-proxy-server:swift-proxy swift-object-server:swift-object \
            swift-container-server:swift-container swift-account-server:swift-account; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair##*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  # No service may start on install (a systemd host would start swift-proxy and memcached).
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq >/dev/null
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  [ "$made_policy" = 0 ] || $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi

export SWIFTGATE_REQUIRE_CLIENTS=1
cargo test --all-targets
cargo build --quiet
SWIFTGATE_BIN="$PWD/target/debug/swiftgate" /usr/bin/python3 tests/compat/compat.py
