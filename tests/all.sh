#!/usr/bin/env bash
# Runs every test: installs what the tests drive (python-swiftclient, rclone, duplicity, restic,
# a real OpenStack Swift and memcached, a real OpenStack Keystone served by uwsgi, Redis and nginx
# for the several-instance test, all Debian packages; idempotent and quiet), runs the cargo test suite with those clients required, then
# the real-Swift compatibility suite and Swift's own functional tests (tests/compat). This is the
# README's test command and what CI runs. `bash tests/all.sh --install-only` stops after the
# install step.
set -euo pipefail
cd "$(dirname "$0")/.."

# check:package pairs; a check is a command on PATH, or a path that the package installs.
# Keystone comes as python3-keystone (keystone-manage, keystone-wsgi-public) and not as the
# `keystone` package, whose maintainer scripts ask debconf questions (database, RabbitMQ), set up
# a system database through dbconfig-common, and ship an init script and a systemd unit serving
# Keystone on port 5000; the suite starts its own (tests/compat/keystone_aio.sh).
# uwsgi-core (not `uwsgi`, which adds an init script) serves it, uwsgi-plugin-python3 runs it.
need_apt=()
for pair in swift:python3-swiftclient rclone:rclone duplicity:duplicity restic:restic curl:curl \
            memcached:memcached swift-proxy-server:swift-proxy swift-object-server:swift-object \
            swift-container-server:swift-container swift-account-server:swift-account \
            keystone-manage:python3-keystone keystone-wsgi-public:python3-keystone \
            /usr/lib/python3/dist-packages/keystonemiddleware:python3-keystonemiddleware \
            uwsgi-core:uwsgi-core uwsgi_python3:uwsgi-plugin-python3 \
            /usr/lib/python3/dist-packages/pytest:python3-pytest /usr/lib/python3/dist-packages/mock:python3-mock \
            /usr/lib/python3/dist-packages/pip:python3-pip \
            promtool:prometheus systemd-analyze:systemd openssl:openssl \
            redis-server:redis-server /usr/sbin/nginx:nginx-light; do
  check=${pair%%:*} pkg=${pair##*:}
  if [ "${check#/}" != "$check" ]; then [ -e "$check" ] && continue; else command -v "$check" >/dev/null 2>&1 && continue; fi
  case " ${need_apt[*]-} " in *" $pkg "*) ;; *) need_apt+=("$pkg") ;; esac
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
  $sudo_cmd apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${need_apt[@]}" >/dev/null 2> >(grep -v '^debconf: delaying package configuration' >&2)
  [ "$made_policy" = 0 ] || $sudo_cmd rm -f /usr/sbin/policy-rc.d
fi
[ "${1:-}" != "--install-only" ] || exit 0

export SWIFTGATE_REQUIRE_CLIENTS=1
cargo test --all-targets
# The suites that hold for either proxy engine, again with hyper's alone (`[proxy] fast_path`);
# tests/fast.rs and tests/tls.rs test the fast engine itself.
SWIFTGATE_FAST_PATH=false cargo test --test proxy --test faults --test expiry --test upstreams --test gateway --test large
cargo build --quiet
SWIFTGATE_BIN="$PWD/target/debug/swiftgate" /usr/bin/python3 tests/compat/compat.py
# OpenStack Swift's own functional suite through the gateway; the expected failures are
# listed, each with its reason, in tests/compat/functional_expected.txt.
SWIFTGATE_BIN="$PWD/target/debug/swiftgate" /usr/bin/python3 tests/compat/functional.py
