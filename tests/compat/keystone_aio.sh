#!/bin/bash
# A real OpenStack Keystone (v3, sqlite, fernet tokens, served by uwsgi) and a single-node Swift
# that trusts it (authtoken + keystoneauth), both on 127.0.0.1, all state under $BASE, the PID of
# every process it starts in $BASE/pid. The shape of OVHcloud / Infomaniak / Catalyst Swift:
# POST /v3/auth/tokens, the token in X-Subject-Token, the storage URL from the catalog's
# object-store entry. keystone_aio_stop.sh stops it all.
#
# Debian packages: python3-keystone python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3
#   swift-proxy swift-object swift-container swift-account memcached curl (tests/all.sh installs
#   them with a policy-rc.d that denies service starts).
# Env: BASE (required), KS_PORT, PROXY_PORT, MEMCACHED_PORT, OBJECT_PORT, CONTAINER_PORT,
#   ACCOUNT_PORT (each a free port on 127.0.0.1 when unset), TOKEN_EXPIRATION (s, default 3600),
#   MAX_FILE_SIZE (bytes, default 5 GiB + 2), LISTING_LIMIT (default 10000),
#   SWIFT_SERVICE_AUTH: how Swift's authtoken middleware authenticates its validation requests,
#   `admin_token` (default) or `password` (the admin user, as a production Swift does).
#   With `password` and tokens shorter than keystoneauth's 120 s "expires soon" threshold, the
#   middleware asks for a new service token (POST /v3/auth/tokens, bcrypt and all) up to three
#   times for every validation, and a burst of concurrent first uses of a token queues a dozen of
#   them on Keystone's single worker: validations then take seconds, and a token sent to Swift a
#   second before its end is refused when Keystone gets to it. With `admin_token` ([DEFAULT]
#   admin_token, a static token: insecure, for tests only) a validation is one GET.
# Writes the facts a client needs to $BASE/env (sourceable). Keystone's request log, one line per
# request with its user agent and start time, is $BASE/log/uwsgi.log:
#   ks-req POST /v3/auth/tokens 201 ua="..." ms=... t=<unix time>
# With SWIFT_SERVICE_AUTH=password, Swift's authtoken middleware gets its service tokens there
# too (ua="keystonemiddleware...").
#
# /etc/swift/swift.conf: Debian's Swift 2.30 reads it whatever swift_dir says, so this writes it
# (as tests/compat/swift_upstream.py does); the one it found is saved in $BASE and put back by the
# stop script. Start one Swift at a time (the files are only read when a server starts).
set -euo pipefail
: "${BASE:?set BASE to a directory this script may own (it is emptied)}"
case $(realpath -m "$BASE") in /|/tmp|/root|/home|/etc|/usr|/var) echo "BASE=$BASE: not a directory to empty" >&2; exit 2 ;; esac
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
KS_PORT=${KS_PORT:-$(free_port)}
PROXY_PORT=${PROXY_PORT:-$(free_port)}
MC_PORT=${MEMCACHED_PORT:-$(free_port)}
OBJECT_PORT=${OBJECT_PORT:-$(free_port)}
CONTAINER_PORT=${CONTAINER_PORT:-$(free_port)}
ACCOUNT_PORT=${ACCOUNT_PORT:-$(free_port)}
ME=$(id -un)
GROUP=$(id -gn)
ADMIN_PW=admin-$RANDOM$RANDOM
ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
SERVICE_AUTH=${SWIFT_SERVICE_AUTH:-admin_token}
case $SERVICE_AUTH in admin_token|password) ;; *) echo "SWIFT_SERVICE_AUTH: admin_token or password" >&2; exit 2 ;; esac
DEMO_PW=demo-$RANDOM$RANDOM
rm -rf "$BASE"; mkdir -p "$BASE"/{ks/fernet,ks/cred,etc,srv/d1,log,pid}
KS=http://127.0.0.1:$KS_PORT
SWIFT_PORTS="$OBJECT_PORT $CONTAINER_PORT $ACCOUNT_PORT $PROXY_PORT"
t0=$EPOCHREALTIME
stamp() { awk -v what="$1" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s %.1fs\n", what, b - a }' >>"$BASE/log/startup.log"; }

# Any port already taken means another server: fail now rather than talk to it.
for p in $KS_PORT $MC_PORT $SWIFT_PORTS; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "port $p is already in use" >&2; exit 1; fi
done

# --- Keystone -------------------------------------------------------------------------------
cat > "$BASE/ks/keystone.conf" <<EOC
[DEFAULT]
log_file = $BASE/log/keystone.log
$([ "$SERVICE_AUTH" = admin_token ] && echo "admin_token = $ADMIN_TOKEN")
[database]
connection = sqlite:///$BASE/ks/keystone.db
[token]
provider = fernet
expiration = ${TOKEN_EXPIRATION:-3600}
[fernet_tokens]
key_repository = $BASE/ks/fernet
[fernet_receipts]
key_repository = $BASE/ks/fernet
[credential]
key_repository = $BASE/ks/cred
[catalog]
driver = sql
[identity]
# bcrypt's minimum: every Keystone password check (the gateway's, and Swift's authtoken getting
# its service token again and again with short-lived tokens) costs ms, not 0.3 s of a core.
password_hash_rounds = 4
EOC
km() { keystone-manage --config-file "$BASE/ks/keystone.conf" "$@" >>"$BASE/log/keystone-manage.log" 2>&1; }
km db_sync
stamp db_sync
km fernet_setup --keystone-user "$ME" --keystone-group "$GROUP"
km credential_setup --keystone-user "$ME" --keystone-group "$GROUP"
# WAL: keystone reads and writes the file through two connections within one request; in
# rollback-journal mode the reader's lock makes the writer fail with "database is locked".
python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=WAL')" "$BASE/ks/keystone.db"
km bootstrap --bootstrap-password "$ADMIN_PW" --bootstrap-admin-url "$KS/v3/" \
  --bootstrap-internal-url "$KS/v3/" --bootstrap-public-url "$KS/v3/" --bootstrap-region-id RegionOne
stamp bootstrap
# One process, one thread: sqlite refuses more. One log line per request, with its user agent.
# uwsgi's http-socket closes the connection after each answer without saying so; clients that
# keep connections (Swift's authtoken, through python-requests) then fail their next request on
# it with "Remote end closed connection without response". `Connection: close` says so. (Keeping
# connections instead would let one idle client hold the only worker.)
uwsgi --plugin python3 --http-socket "127.0.0.1:$KS_PORT" --wsgi-file /usr/bin/keystone-wsgi-public \
  --master --lazy-apps --processes 1 --threads 1 --die-on-term --need-app --add-header 'Connection: close' \
  --logformat 'ks-req %(method) %(uri) %(status) ua="%(uagent)" ms=%(msecs) t=%(time)' \
  --env OS_KEYSTONE_CONFIG_FILES="$BASE/ks/keystone.conf" >"$BASE/log/uwsgi.log" 2>&1 &
echo $! > "$BASE/pid/keystone.pid"
up=0
for i in $(seq 1 300); do
  curl -fsS -o /dev/null "$KS/v3" 2>/dev/null && { up=1; break; }
  kill -0 "$(cat "$BASE/pid/keystone.pid")" 2>/dev/null || break
  sleep 0.2  # poll interval; 300 polls bound the wait
done
[ $up = 1 ] || { tail -20 "$BASE/log/uwsgi.log" >&2; echo "keystone failed to start" >&2; exit 1; }
stamp keystone-up

# The catalog, a demo user and project, and an application credential, by Keystone's REST API
# (the openstack CLI costs seconds per call).
KS=$KS PROXY_PORT=$PROXY_PORT ADMIN_PW=$ADMIN_PW DEMO_PW=$DEMO_PW python3 - "$BASE/ks/demo.env" <<'EOP'
import json, os, sys, urllib.request
ks = os.environ["KS"] + "/v3"

def call(method, path, body=None, token=None, want=(200, 201, 204)):
    req = urllib.request.Request(ks + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "User-Agent": "keystone-aio-setup"})
    if token:
        req.add_header("X-Auth-Token", token)
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status in want, (method, path, r.status)
        data = r.read()
        return r.headers, (json.loads(data) if data else None)

def token(user, password, project):
    h, body = call("POST", "/auth/tokens", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    return h["X-Subject-Token"], body

admin, _ = token("admin", os.environ["ADMIN_PW"], "admin")
_, svc = call("POST", "/services", {"service": {"type": "object-store", "name": "swift"}}, admin)
for interface in ("public", "internal", "admin"):
    call("POST", "/endpoints", {"endpoint": {"service_id": svc["service"]["id"], "interface": interface, "region_id": "RegionOne",
                                             "url": f"http://127.0.0.1:{os.environ['PROXY_PORT']}/v1/AUTH_%(project_id)s"}}, admin)
_, roles = call("GET", "/roles?name=member", token=admin)
role = roles["roles"][0]["id"] if roles["roles"] else call("POST", "/roles", {"role": {"name": "member"}}, admin)[1]["role"]["id"]
_, project = call("POST", "/projects", {"project": {"name": "demo", "domain_id": "default"}}, admin)
pid = project["project"]["id"]
_, user = call("POST", "/users", {"user": {"name": "demo", "domain_id": "default", "password": os.environ["DEMO_PW"]}}, admin)
uid = user["user"]["id"]
call("PUT", f"/projects/{pid}/users/{uid}/roles/{role}", token=admin)
demo, _ = token("demo", os.environ["DEMO_PW"], "demo")
# An application credential of the demo user on the demo project (what unattended setups use).
_, ac = call("POST", f"/users/{uid}/application_credentials", {"application_credential": {"name": "swiftgate-test"}}, demo)
with open(sys.argv[1], "w") as f:
    f.write(f"KS_PROJECT_ID={pid}\nKS_USER_ID={uid}\nKS_APP_CRED_ID={ac['application_credential']['id']}\n"
            f"KS_APP_CRED_SECRET={ac['application_credential']['secret']}\n")
EOP
# shellcheck disable=SC1091
. "$BASE/ks/demo.env"
stamp catalog

# --- Swift, trusting Keystone ---------------------------------------------------------------
cat > "$BASE/etc/swift.conf" <<EOC
[swift-hash]
swift_hash_path_suffix = swiftgate-keystone
swift_hash_path_prefix = swiftgate
[storage-policy:0]
name = Policy-0
default = yes
[swift-constraints]
max_file_size = ${MAX_FILE_SIZE:-5368709122}
container_listing_limit = ${LISTING_LIMIT:-10000}
account_listing_limit = ${LISTING_LIMIT:-10000}
EOC
mkdir -p /etc/swift
[ ! -e /etc/swift/swift.conf ] || cp -p /etc/swift/swift.conf "$BASE/etc/swift.conf.saved"
cp "$BASE/etc/swift.conf" /etc/swift/swift.conf
cd "$BASE/etc"
common() { printf '[DEFAULT]\nswift_dir = %s\ndevices = %s\nmount_check = false\nbind_ip = 127.0.0.1\nbind_port = %s\nworkers = 1\nuser = %s\nlog_level = INFO\n' \
  "$BASE/etc" "$BASE/srv" "$1" "$ME"; }
for t in object:$OBJECT_PORT container:$CONTAINER_PORT account:$ACCOUNT_PORT; do
  n=${t%%:*}; p=${t##*:}
  swift-ring-builder $n.builder create 6 1 1 >/dev/null
  swift-ring-builder $n.builder add r1z1-127.0.0.1:$p/d1 1 >/dev/null
  swift-ring-builder $n.builder rebalance >/dev/null
  { common $p; printf '[pipeline:main]\npipeline = healthcheck %s-server\n[app:%s-server]\nuse = egg:swift#%s\n[filter:healthcheck]\nuse = egg:swift#healthcheck\n' $n $n $n; } > $n-server.conf
done
{ common $PROXY_PORT; cat <<EOC
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl authtoken keystoneauth copy slo dlo versioned_writes symlink proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = $KS/v3
$(if [ "$SERVICE_AUTH" = admin_token ]; then
  printf 'auth_type = admin_token\nendpoint = %s\ntoken = %s\n' "$KS/v3" "$ADMIN_TOKEN"
else
  printf 'auth_url = %s\nauth_type = password\nproject_domain_id = default\nuser_domain_id = default\n' "$KS"
  printf 'project_name = admin\nusername = admin\npassword = %s\n' "$ADMIN_PW"
fi)
delay_auth_decision = True
token_cache_time = 5
service_token_roles_required = False
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member, SwiftOperator
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MC_PORT
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
[filter:symlink]
use = egg:swift#symlink
EOC
} > proxy-server.conf
memcached -u "$ME" -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 64 >"$BASE/log/memcached.log" 2>&1 &
echo $! > "$BASE/pid/memcached.pid"
for n in object container account proxy; do
  swift-$n-server "$BASE/etc/$n-server.conf" -v >"$BASE/log/$n.log" 2>&1 &
  echo $! > "$BASE/pid/$n.pid"
done
up=0
for i in $(seq 1 300); do
  ok=1
  for p in $SWIFT_PORTS; do curl -fsS -o /dev/null "http://127.0.0.1:$p/healthcheck" 2>/dev/null || { ok=0; break; }; done
  [ $ok = 1 ] && { up=1; break; }
  sleep 0.2  # poll interval; 300 polls bound the wait
done
[ $up = 1 ] || { tail -n 20 "$BASE"/log/*.log >&2; echo "swift failed to start" >&2; exit 1; }
stamp swift-up
cat > "$BASE/env" <<EOE
KS_AUTH_URL=$KS/v3
KS_PORT=$KS_PORT
KS_USER=demo
KS_USER_ID=$KS_USER_ID
KS_PASSWORD=$DEMO_PW
KS_PROJECT=demo
KS_PROJECT_ID=$KS_PROJECT_ID
KS_DOMAIN=Default
KS_REGION=RegionOne
KS_APP_CRED_ID=$KS_APP_CRED_ID
KS_APP_CRED_SECRET=$KS_APP_CRED_SECRET
KS_TOKEN_EXPIRATION=${TOKEN_EXPIRATION:-3600}
KS_REQUEST_LOG=$BASE/log/uwsgi.log
SWIFT_URL=http://127.0.0.1:$PROXY_PORT/v1/AUTH_$KS_PROJECT_ID
SWIFT_PROXY_LOG=$BASE/log/proxy.log
EOE
echo "keystone and swift up: $BASE/env"
