#!/usr/bin/env bash
# User-space instructions the gateway executes per 4 KiB GET (c=1 and c=64), counted by
# callgrind: deterministic where the timed rows of `cargo bench --bench e2e` drift with the
# machine's day, so it is how a small change to the request path is judged. Installs valgrind
# from Debian's packages if missing. Writes target/bench/instructions.json; with --annotate,
# also prints the functions that cost most per request at c=64 (self cost).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v callgrind_control >/dev/null 2>&1; then
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
cargo bench --bench e2e -- --instructions "$@"
