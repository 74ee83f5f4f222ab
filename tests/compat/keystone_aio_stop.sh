#!/bin/bash
# Stops what keystone_aio.sh started under $BASE: each recorded process and its children (Swift's
# workers, uwsgi's worker), waits until they are gone and their ports are free, and puts back the
# /etc/swift/swift.conf that keystone_aio.sh found if the one there is still its own.
: "${BASE:?set BASE to the directory keystone_aio.sh used}"
pids=()
for f in "$BASE"/pid/*.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f"); rm -f "$f"
  for c in $(pgrep -P "$p" 2>/dev/null); do pids+=("$c"); done
  pids+=("$p")
done
if [ ${#pids[@]} -gt 0 ]; then
  kill "${pids[@]}" 2>/dev/null
  gone=0
  for i in $(seq 1 50); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && { gone=1; break; }
    sleep 0.2  # poll interval; 50 polls bound the wait
  done
  [ $gone = 1 ] || kill -9 "${pids[@]}" 2>/dev/null
fi
if [ -f "$BASE/etc/swift.conf" ] && cmp -s "$BASE/etc/swift.conf" /etc/swift/swift.conf; then
  if [ -f "$BASE/etc/swift.conf.saved" ]; then cp -p "$BASE/etc/swift.conf.saved" /etc/swift/swift.conf; else rm -f /etc/swift/swift.conf; fi
fi
exit 0
