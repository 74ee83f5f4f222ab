#!/usr/bin/env bash
# The peer to beat: runs the end-to-end bench with a tuned nginx reverse proxy as one more path
# (buffering off, 1 MiB proxy_buffer_size and client_body_buffer_size, upstream keepalive).
# Installs nginx from Debian's packages if missing (no service is started). Pass --quick for
# the smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null; $sudo_cmd chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends nginx-light >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends nginx >/dev/null
  [ "$made_policy" = 0 ] || $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi
SWIFTGATE_BENCH_NGINX=1 cargo bench --bench e2e -- "$@"
