#!/usr/bin/python3
"""Real Swift, real clients: the compatibility suite.

Stages (COMPAT_STAGES, comma-separated, picks some; all by default):
- hubic: a real single-node OpenStack Swift (tempauth, 5 s tokens, 10 MiB max_file_size), the
  HubiC emulator handing out that Swift's real tokens, and `swiftgate serve` over TLS in proxy
  mode and in redirect mode (columns `proxy` and `redirect`);
- v1: a `swift-v1` upstream account straight on that tempauth Swift, proxy mode (`v1-proxy`);
- keystone: a real OpenStack Keystone (keystone_aio.sh: v3, fernet, short tokens) and a Swift
  that trusts it; gateways with `keystone` accounts: password auth in proxy mode (`ks-pw`), an
  application credential in proxy mode (`ks-app`), redirect mode with two accounts
  (`ks-redir`), and three gateways sharing a real redis-server behind a real nginx doing
  round-robin over TLS (`ks-shared`), which must cost Keystone no more token requests than one
  gateway does.
Each drives python-swiftclient (CLI and Python API), rclone, duplicity and restic (all or a
subset) through the gateway; every scenario checks content byte for byte. For the upstream-account
stages it counts the token requests the gateway made upstream (Keystone's own request log,
without the ones Swift's authtoken middleware makes for itself; tempauth's proxy log) and fails
a stage that made more than (renewal periods spanned + 2) x accounts, where a renewal period is
3/4 of a token's life: the gateway renews a quarter of a life ahead (src/tokens.rs, RenewPolicy:
renew_ahead capped at life/4), so an account in constant use costs 4/3 requests per lifetime with
these short test tokens (1.09 with 1 h tokens, renewed 5 min ahead); one per client request would
be hundreds.
Prints a table client x scenario x stage and `N passed, N failed`; exits non-zero on failure.

Run with Debian's /usr/bin/python3 (it imports swiftclient). SWIFTGATE_BIN names the binary;
COMPAT_ONLY=<client> keeps one client's scenarios; COMPAT_KS_TOKEN_LIFE sets Keystone's token
life (s, default 12); COMPAT_KEEP=1 keeps the temp dir (logs, configs) and prints its path;
SWIFT_SERVICE_AUTH=password makes the Keystone-backed Swift validate tokens as a production one
does (see keystone_aio.sh: slower, and Keystone then refuses some tokens sent just before their end).
"""

import hashlib
import json
import secrets
import socket
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swift_upstream  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("SWIFTGATE_BIN") or os.path.join(ROOT, "target", "debug", "swiftgate")
CA = os.path.join(ROOT, "certs-dev", "ca.crt")
GW_USER, GW_KEY = "gw:user", "gw-key-0123"
GW_USER2, GW_KEY2 = "gw:app", "gw-key-4567"
HUBIC_LOGIN, HUBIC_PASSWORD = "u@example.com", "hubic-pw"
TOKEN_LIFE = 5
# Several expiries within a long client run, and still seconds of use per token.
KS_TOKEN_LIFE = int(os.environ.get("COMPAT_KS_TOKEN_LIFE") or 12)
MAX_FILE = 10 * 1024 * 1024
REDIS = os.environ.get("SWIFTGATE_REDIS_SERVER") or "redis-server"
NGINX = "/usr/sbin/nginx"
WEIRD = "dir a/sub dir/ünï cødé+%25 plus.txt"
STAGE_GROUPS = ("hubic", "v1", "keystone")
RENEW_SHARE = 0.75  # the share of a token's life the gateway uses before renewing it (see above)
COLUMNS = ("proxy", "redirect", "v1-proxy", "ks-pw", "ks-app", "ks-redir")


class Failed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failed(message)


def md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same(a, b):
    check(md5(a) == md5(b), f"{b} differs from {a}")


def stop_procs(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()


def spawn_url(procs, args, **kw):
    """Starts a swiftgate command that prints its URL as its first stdout line."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
    procs.append(p)
    line = p.stdout.readline().strip()
    check(line.startswith("http"), f"{args[1]} printed {line!r}")
    return line


def hash_key(key):
    return subprocess.run([BIN, "hash-key"], input=key + "\n", capture_output=True, text=True, check=True, timeout=60).stdout.strip()


class Stack:
    """The tempauth Swift, and for the hubic stage the emulator + two gateways; stop() stops all."""

    def __init__(self, base):
        self.base = base
        self.procs = []
        self.swift = swift_upstream.Swift(os.path.join(base, "swift"), token_life=TOKEN_LIFE, max_file_size=MAX_FILE,
                                          listing_limit=10000)
        self.gateways = {}

    def start(self, hubic=True):
        self.swift.start()
        if not hubic:
            return
        ports = {mode: swift_upstream.free_port() for mode in ("proxy", "redirect")}
        apps = {mode: (f"api_hubic_compat{mode}", f"secret-{mode}") for mode in ports}
        args = [BIN, "emulate", "--listen", "127.0.0.1:0", "--swift-token-ttl", str(TOKEN_LIFE),
                "--swift-auth", self.swift.auth_url, "--swift-user", "test:tester", "--swift-key", "testing",
                "--user", f"{HUBIC_LOGIN}:{HUBIC_PASSWORD}"]
        for mode, (cid, secret) in apps.items():
            args += ["--app", f"{cid}:{secret}:https://localhost:{ports[mode]}/callback"]
        log = open(os.path.join(self.base, "emulator.log"), "w")
        emulator = spawn_url(self.procs, args, stderr=log)
        key_hash = hash_key(GW_KEY)
        ctx = ssl.create_default_context(cafile=CA)
        for mode, port in ports.items():
            cid, secret = apps[mode]
            config = os.path.join(self.base, f"{mode}.toml")
            with open(config, "w") as f:
                f.write(
                    f'listen = "127.0.0.1:{port}"\npublic_url = "https://localhost:{port}"\n'
                    f'state_dir = "state-{mode}"\nmode = "{mode}"\n'
                    f'[tls]\ncert = "{ROOT}/certs-dev/server.crt"\nkey = "{ROOT}/certs-dev/server.key"\n'
                    f'[hubic]\napi_base = "{emulator}"\nclient_id = "{cid}"\nclient_secret = "{secret}"\n'
                    f'[[user]]\nname = "{GW_USER}"\nkey_hash = "{key_hash}"\n'
                )
            reg = subprocess.run([BIN, "register", "--config", config, "--user", GW_USER, "--login", HUBIC_LOGIN],
                                 input=HUBIC_PASSWORD + "\n", capture_output=True, text=True, timeout=60)
            check(reg.returncode == 0, f"register ({mode}): {reg.stderr}")
            log = open(os.path.join(self.base, f"gateway-{mode}.log"), "w")
            url = spawn_url(self.procs, [BIN, "serve", "--config", config], stderr=log)
            swift_upstream.wait_ok(url + "/healthz", 30, context=ctx)
            self.gateways[mode] = url

    def stop_gateways(self):
        """The emulator and the HubiC gateways (so that nothing else asks tempauth for tokens)."""
        stop_procs(self.procs)

    def stop(self):
        stop_procs(self.procs)
        self.swift.stop()


def toml_value(v):
    return json.dumps(v) if isinstance(v, str) else str(v)


class Gateway:
    """One `swiftgate serve` over TLS with declared upstream accounts ([[account]] tables) and
    users bound to them; stop() stops it."""

    def __init__(self, base, name, mode, accounts, users, public_url=None, extra=""):
        self.name, self.mode = name, mode
        self.accounts = accounts
        self.port = swift_upstream.free_port()
        self.config = os.path.join(base, f"{name}.toml")
        self.log = os.path.join(base, f"gateway-{name}.log")
        self.procs = []
        self.url = None
        public_url = public_url or f"https://localhost:{self.port}"
        text = (f'listen = "127.0.0.1:{self.port}"\npublic_url = "{public_url}"\n'
                f'state_dir = "state-{name}"\nmode = "{mode}"\n'
                f'[tls]\ncert = "{ROOT}/certs-dev/server.crt"\nkey = "{ROOT}/certs-dev/server.key"\n{extra}')
        for account in accounts:
            text += "\n[[account]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in account.items())
        for user, key, account in users:
            text += f'\n[[user]]\nname = "{user}"\nkey_hash = "{hash_key(key)}"\naccount = "{account}"\n'
        with open(self.config, "w") as f:
            f.write(text)

    def check_online(self):
        """`check-config --online`: authenticates each account once, prints its storage URL."""
        r = subprocess.run([BIN, "check-config", "--online", "--config", self.config], capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout + r.stderr

    def start(self):
        with open(self.log, "w") as log:
            self.url = spawn_url(self.procs, [BIN, "serve", "--config", self.config], stderr=log)
        swift_upstream.wait_ok(self.url + "/healthz", 30, context=ssl.create_default_context(cafile=CA))
        return self.url

    def stop(self):
        stop_procs(self.procs)

    def tail(self, n=15):
        if not os.path.exists(self.log):
            return ""
        return "".join(open(self.log, errors="replace").readlines()[-n:])


class SharedGateways:
    """Three gateways sharing a redis-server (token key file, [store] kind = "redis") behind an
    nginx doing round-robin over TLS, the README's snippet; for account_stage, it stands for one
    gateway whose URL is nginx's."""

    def __init__(self, base, name, accounts, users, count=3):
        self.name, self.mode, self.accounts = name, "proxy", accounts
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        self.redis_port = swift_upstream.free_port()
        self.nginx_port = swift_upstream.free_port()
        self.url = f"https://localhost:{self.nginx_port}"
        key_file = os.path.join(self.dir, "token.key")
        with open(key_file, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        extra = (f'[proxy]\ntoken_key_file = "{key_file}"\n'
                 f'[store]\nkind = "redis"\nurl = "redis://127.0.0.1:{self.redis_port}/0"\n')
        self.gateways = [Gateway(base, f"{name}-{n}", "proxy", accounts, users, public_url=self.url, extra=extra)
                         for n in range(count)]
        self.log = self.gateways[0].log
        self.logs = [g.log for g in self.gateways]
        self.procs = []

    def start(self):
        self.procs.append(subprocess.Popen(
            [REDIS, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", self.dir, "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not self.redis_answers():
            check(time.monotonic() < deadline and self.procs[0].poll() is None, "redis-server did not answer PING")
            time.sleep(0.05)  # poll interval; the deadline bounds the wait
        servers = "".join(f"    server 127.0.0.1:{g.port} max_fails=1 fail_timeout=2s;\n" for g in self.gateways)
        temp = "".join(f"  {kind}_temp_path {self.dir}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = (f"daemon off;\nworker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/nginx-error.log warn;\n"
                f"events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n{temp}"
                f"  upstream swiftgate {{\n{servers}    keepalive 32;\n  }}\n"
                f"  server {{\n    listen 127.0.0.1:{self.nginx_port} ssl;\n"
                f"    ssl_certificate {ROOT}/certs-dev/server.crt;\n    ssl_certificate_key {ROOT}/certs-dev/server.key;\n"
                f"    client_max_body_size 0;\n    location / {{\n      proxy_pass https://swiftgate;\n"
                f"      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
                f"      proxy_set_header Host $http_host;\n      proxy_buffering off;\n      proxy_request_buffering off;\n"
                f"      proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n    }}\n  }}\n}}\n")
        conf_path = os.path.join(self.dir, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        self.procs.append(subprocess.Popen([NGINX, "-c", conf_path, "-p", self.dir], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        for gateway in self.gateways:
            gateway.start()
        return self.url

    def redis_answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                return c.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def check_online(self):
        return self.gateways[0].check_online()

    def stop(self):
        for gateway in self.gateways:
            gateway.stop()
        stop_procs(self.procs)

    def shared_renewals(self):
        """Renewals each gateway took from another instead of asking Keystone."""
        return sum(open(g.log, errors="replace").read().count("taken from another instance") for g in self.gateways)


class TokenLog:
    """Token requests in an upstream auth service's request log, from a mark on.

    Keystone (keystone_aio.sh's uwsgi log): `ks-req POST /v3/auth/tokens 201 ua="..." ms=..`; the
    ones whose user agent is keystonemiddleware's are Swift's authtoken middleware getting its own
    service token, not the gateway's. tempauth (Swift's proxy log, proxy_logging): `GET /auth/v1.0`
    lines; nothing but the gateway under test asks it for tokens while the mark is set."""

    KS = re.compile(r'^ks-req POST /v3/auth/tokens(?:\?\S*)? (\d+) ua="([^"]*)"')
    V1 = re.compile(r' GET /auth/v1\.0 HTTP/\S+ (\d+) \S+ (\S+)')

    def __init__(self, path, kind):
        self.path, self.kind = path, kind
        self.offset = 0

    def mark(self):
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def since_mark(self):
        """(the gateway's token requests, {user agent: count} of them, the others' count)."""
        mine, others, agents = 0, 0, {}
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for raw in f:
                line = raw.decode(errors="replace")
                m = (self.KS if self.kind == "keystone" else self.V1).search(line)
                if not m:
                    continue
                ua = m.group(2)
                if self.kind == "keystone" and ua.startswith("keystonemiddleware"):
                    others += 1
                    continue
                mine += 1
                key = f"{ua} {m.group(1)}"
                agents[key] = agents.get(key, 0) + 1
        return mine, agents, others
class Ctx:
    """What a scenario gets: the gateway URL and mode, the gateway user, the upstream token life, a
    scratch dir with the test files, an environment; storage_url, when known, is what redirect
    mode must hand out."""

    def __init__(self, mode, gateway, work, user=GW_USER, key=GW_KEY, token_life=TOKEN_LIFE, storage_url=None):
        self.mode = mode
        self.gateway = gateway
        self.auth = gateway + "/auth/v1.0"
        self.work = work
        self.user, self.key = user, key
        self.token_life = token_life
        self.storage_url = storage_url
        self.second = None  # (user, key) of a second gateway user, for sw_second_account
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_", "SWIFT_"))}
        env.update({
            "ST_AUTH": self.auth, "ST_USER": user, "ST_KEY": key,
            "SWIFT_AUTHURL": self.auth, "SWIFT_USERNAME": user, "SWIFT_PASSWORD": key, "SWIFT_AUTHVERSION": "1",
            "REQUESTS_CA_BUNDLE": CA, "SSL_CERT_FILE": CA, "RESTIC_PASSWORD": "restic-pw", "HOME": work,
        })
        self.env = env

    def run(self, args, ok=True, input_file=None, **kw):
        stdin = open(input_file, "rb") if input_file else subprocess.DEVNULL
        r = subprocess.run(args, env=self.env, cwd=self.work, stdin=stdin, capture_output=True, **kw)
        if ok and r.returncode != 0:
            raise Failed(f"{' '.join(args)} -> {r.returncode}\n{r.stdout.decode(errors='replace')[-1500:]}\n{r.stderr.decode(errors='replace')[-1500:]}")
        return r

    def path(self, name):
        return os.path.join(self.work, name)


# ---------------------------------------------------------------- python-swiftclient CLI

def swift(ctx, *args, **kw):
    return ctx.run(["swift", *args], **kw)


def sw_auth_stat(ctx):
    out = swift(ctx, "auth").stdout.decode()
    url = [l for l in out.splitlines() if "OS_STORAGE_URL" in l][0].split("=", 1)[1]
    check(url.startswith(ctx.gateway) == (ctx.mode == "proxy"), f"storage URL {url}")
    if ctx.mode == "redirect" and ctx.storage_url:
        check(url == ctx.storage_url, f"storage URL {url}, upstream's is {ctx.storage_url}")
    swift(ctx, "stat")


def sw_upload_small(ctx):
    swift(ctx, "upload", "swc", "small.txt")
    swift(ctx, "download", "swc", "small.txt", "-o", "small.out")
    same(ctx.path("small.txt"), ctx.path("small.out"))


def sw_names(ctx):
    swift(ctx, "upload", "swc", "f3m.bin", "--object-name", WEIRD)
    listed = swift(ctx, "list", "swc", "--prefix", "dir a/").stdout.decode().splitlines()
    check(listed == [WEIRD], f"listed {listed}")
    swift(ctx, "download", "swc", WEIRD, "-o", "weird.out")
    same(ctx.path("f3m.bin"), ctx.path("weird.out"))


def sw_listing(ctx):
    os.makedirs(ctx.path("many/sub"), exist_ok=True)
    for i in range(25):
        with open(ctx.path(f"many/{'sub/' if i % 2 else ''}o{i:02}"), "w") as f:
            f.write(str(i))
    swift(ctx, "upload", "swlist", "many")
    names = swift(ctx, "list", "swlist").stdout.decode().split()
    check(len(names) == 25, f"{len(names)} names over pages of 20")
    top = swift(ctx, "list", "swlist", "--prefix", "many/", "--delimiter", "/").stdout.decode().split()
    check("many/sub/" in top and len(top) == 14, f"delimiter listing {top}")


def sw_too_big(ctx):
    r = swift(ctx, "upload", "swc", "f11m.bin", ok=False)
    check(r.returncode != 0 and b"413" in r.stderr, f"expected 413: {r.stderr[-300:]}")


def sw_dlo(ctx):
    swift(ctx, "upload", "-S", "4194304", "swc", "f11m.bin")
    stat = swift(ctx, "stat", "swc", "f11m.bin").stdout.decode()
    check("Manifest: swc_segments/" in stat, stat)
    swift(ctx, "download", "swc", "f11m.bin", "-o", "dlo.out")
    same(ctx.path("f11m.bin"), ctx.path("dlo.out"))


def sw_slo(ctx):
    swift(ctx, "upload", "--use-slo", "-S", "4194304", "swc", "f11m.bin", "--object-name", "slo.bin")
    head = swift(ctx, "stat", "swc", "slo.bin").stdout.decode()
    check("X-Static-Large-Object: True" in head or "Static Large Object: True" in head, head)
    swift(ctx, "download", "swc", "slo.bin", "-o", "slo.out")
    same(ctx.path("f11m.bin"), ctx.path("slo.out"))


def sw_chunked(ctx):
    swift(ctx, "upload", "swc", "-", "--object-name", "piped.bin", input_file=ctx.path("f3m.bin"))
    swift(ctx, "download", "swc", "piped.bin", "-o", "piped.out")
    same(ctx.path("f3m.bin"), ctx.path("piped.out"))


def sw_range(ctx):
    swift(ctx, "upload", "swc", "f3m.bin")
    out = swift(ctx, "download", "swc", "f3m.bin", "-H", "Range: bytes=1000000-1000099", "-o", "-").stdout
    with open(ctx.path("f3m.bin"), "rb") as f:
        f.seek(1000000)
        check(out == f.read(100), "range bytes differ")


def sw_copy_post(ctx):
    swift(ctx, "upload", "swc", "small.txt")
    swift(ctx, "copy", "-d", "/swc2/copied.txt", "swc", "small.txt")
    swift(ctx, "download", "swc2", "copied.txt", "-o", "copied.out")
    same(ctx.path("small.txt"), ctx.path("copied.out"))
    swift(ctx, "post", "-m", "Colour:blue", "swc", "small.txt")
    stat = swift(ctx, "stat", "swc", "small.txt").stdout.decode()
    check("Meta Colour: blue" in stat, stat)


def sw_delete_bulk(ctx):
    if not os.path.isdir(ctx.path("many")):
        sw_listing(ctx)
    swift(ctx, "delete", "swlist")
    r = swift(ctx, "list", "swlist", ok=False)
    check(r.returncode != 0 or not r.stdout.strip(), "container still listed objects")
    swift(ctx, "delete", "swc", "f11m.bin")
    segs = swift(ctx, "list", "swc_segments", ok=False).stdout.decode().split()
    check(not any(s.startswith("f11m.bin/") for s in segs), f"segments left: {segs[:3]}")


def sw_long_run(ctx):
    """Several upstream token lifetimes of uploads and downloads."""
    end = time.monotonic() + 3 * ctx.token_life
    i = 0
    while time.monotonic() < end:
        swift(ctx, "upload", "swlong", "f3m.bin", "--object-name", f"o{i}")
        swift(ctx, "download", "swlong", f"o{i}", "-o", "long.out")
        same(ctx.path("f3m.bin"), ctx.path("long.out"))
        i += 1
    check(i >= 3, f"only {i} rounds")


# ---------------------------------------------------------------- python-swiftclient API

def api_conn(ctx, **kw):
    import swiftclient
    return swiftclient.Connection(authurl=ctx.auth, user=ctx.user, key=ctx.key, retries=2, starting_backoff=0.2,
                                  cacert=CA, **kw)


def api_objects(ctx):
    c = api_conn(ctx)
    c.put_container("api")
    data = open(ctx.path("f3m.bin"), "rb").read()
    with open(ctx.path("f3m.bin"), "rb") as f:
        etag = c.put_object("api", "file.bin", f)
    check(etag == hashlib.md5(data).hexdigest(), f"etag {etag}")

    def gen():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]
    c.put_object("api", "gen.bin", gen(), chunk_size=65536)
    check(c.get_object("api", "gen.bin")[1] == data, "generator upload differs")
    _, part = c.get_object("api", "file.bin", headers={"Range": "bytes=5-14"})
    check(part == data[5:15], "range differs")
    c.post_object("api", "file.bin", {"X-Object-Meta-K": "v"})
    check(c.head_object("api", "file.bin").get("x-object-meta-k") == "v", "metadata")
    c.copy_object("api", "file.bin", "/api/copy.bin")
    check(c.get_object("api", "copy.bin")[1] == data, "copy differs")
    names = sorted(o["name"] for o in c.get_container("api", full_listing=True)[1])
    check(names == ["copy.bin", "file.bin", "gen.bin"], f"{names}")
    for n in names:
        c.delete_object("api", n)


def api_listing_pages(ctx):
    c = api_conn(ctx)
    c.put_container("apipages")
    for i in range(25):
        c.put_object("apipages", f"p/{i:02}", str(i).encode())
    names, marker, pages = [], "", 0
    while True:
        _, page = c.get_container("apipages", limit=10, marker=marker, prefix="p/")
        if not page:
            break
        pages += 1
        names += [o["name"] for o in page]
        marker = page[-1]["name"]
    check(pages == 3 and names == [f"p/{i:02}" for i in range(25)], f"{pages} pages, {len(names)} names")
    _, subdirs = c.get_container("apipages", delimiter="/")
    check([d.get("subdir") for d in subdirs] == ["p/"], f"{subdirs}")


def api_token_expiry(ctx):
    """A client holding one token across several upstream expiries (proxy mode: the gateway's
    token outlives upstream's, so preauth use keeps working; redirect mode: re-auth works)."""
    import swiftclient
    c = api_conn(ctx)
    c.put_container("apiexp")
    c.put_object("apiexp", "a", b"first")
    url, token = c.get_auth()
    time.sleep(ctx.token_life + 2)  # let the upstream token expire (workload shaping)
    if ctx.mode == "proxy":
        pre = swiftclient.Connection(preauthurl=url, preauthtoken=token, retries=0, cacert=CA)
        with open(ctx.path("f3m.bin"), "rb") as f:
            pre.put_object("apiexp", "b", f)
        check(pre.get_object("apiexp", "a")[1] == b"first", "preauth read")
    else:
        with open(ctx.path("f3m.bin"), "rb") as f:
            c.put_object("apiexp", "b", f)
    check(sorted(o["name"] for o in c.get_container("apiexp")[1]) == ["a", "b"], "listing after expiry")


# ---------------------------------------------------------------- rclone

def rclone(ctx, *args, **kw):
    env = {"RCLONE_CONFIG_GW_TYPE": "swift", "RCLONE_CONFIG_GW_USER": ctx.user, "RCLONE_CONFIG_GW_KEY": ctx.key,
           "RCLONE_CONFIG_GW_AUTH": ctx.auth}
    ctx.env.update(env)
    return ctx.run(["rclone", "-q", "--config", ctx.path("rclone.conf"), "--ca-cert", CA,
                    "--low-level-retries", "2", "--retries", "1", *args], **kw)


def rc_auth_list(ctx):
    rclone(ctx, "mkdir", "gw:rc")
    rclone(ctx, "lsd", "gw:")


def rc_small_and_names(ctx):
    rclone(ctx, "copyto", "small.txt", "gw:rc/small.txt")
    rclone(ctx, "copyto", "f3m.bin", f"gw:rc/{WEIRD}")
    rclone(ctx, "copyto", f"gw:rc/{WEIRD}", "rcweird.out")
    same(ctx.path("f3m.bin"), ctx.path("rcweird.out"))
    sums = rclone(ctx, "md5sum", "gw:rc/small.txt").stdout.decode()
    check(sums.split()[0] == md5(ctx.path("small.txt")), sums)


def rc_chunked_dlo(ctx):
    rclone(ctx, "copyto", "--swift-chunk-size", "4M", "f11m.bin", "gw:rc/big.bin")
    rclone(ctx, "copyto", "gw:rc/big.bin", "rcbig.out")
    same(ctx.path("f11m.bin"), ctx.path("rcbig.out"))
    rclone(ctx, "rcat", "--swift-chunk-size", "4M", "gw:rc/streamed.bin", input_file=ctx.path("f11m.bin"))
    rclone(ctx, "copyto", "gw:rc/streamed.bin", "rcstream.out")
    same(ctx.path("f11m.bin"), ctx.path("rcstream.out"))


def rc_range(ctx):
    out = rclone(ctx, "cat", "--offset", "4194300", "--count", "10", "gw:rc/big.bin").stdout
    with open(ctx.path("f11m.bin"), "rb") as f:
        f.seek(4194300)
        check(out == f.read(10), "range differs")


def rc_check_delete(ctx):
    os.makedirs(ctx.path("rdir"), exist_ok=True)
    for i in range(4):
        shutil.copy(ctx.path("small.txt"), ctx.path(f"rdir/f{i}"))
    rclone(ctx, "copy", "rdir", "gw:rc/rdir")
    rclone(ctx, "check", "rdir", "gw:rc/rdir")
    rclone(ctx, "deletefile", "gw:rc/big.bin")
    left = rclone(ctx, "lsf", "-R", "gw:rc_segments").stdout.decode().split()
    check(not any(l.startswith("big.bin/") and not l.endswith("/") for l in left), f"segments left {left[:3]}")
    rclone(ctx, "purge", "gw:rc")


def rc_long_run(ctx):
    """About 2.5 upstream token lifetimes of throttled uploads (150 KiB/s)."""
    os.makedirs(ctx.path("rlong"), exist_ok=True)
    for i in range(6):
        with open(ctx.path(f"rlong/f{i}"), "wb") as f:
            f.write(os.urandom(60_000 * ctx.token_life))
    rclone(ctx, "copy", "--transfers", "1", "--bwlimit", "150k", "rlong", "gw:rlong")
    rclone(ctx, "check", "rlong", "gw:rlong")


# ---------------------------------------------------------------- duplicity and restic

def dup(ctx, *args):
    return ctx.run(["duplicity", *args, "--no-encryption", "--archive-dir", ctx.path("dupcache"),
                    "--volsize", "12", "--mp-segment-size", "4", "--num-retries", "1"])


def dup_cycle(ctx):
    src = ctx.path("dsrc")
    os.makedirs(src, exist_ok=True)
    shutil.copy(ctx.path("f11m.bin"), os.path.join(src, "big.bin"))
    shutil.copy(ctx.path("small.txt"), os.path.join(src, "h.txt"))
    dup(ctx, "full", src, "swift://dup")
    with open(os.path.join(src, "added.txt"), "w") as f:
        f.write("incremental\n")
    dup(ctx, "incremental", src, "swift://dup")
    dup(ctx, "verify", "swift://dup", src)
    dup(ctx, "restore", "swift://dup", ctx.path("drst"))
    for name in ("big.bin", "h.txt", "added.txt"):
        same(os.path.join(src, name), ctx.path(f"drst/{name}"))


def restic(ctx, *args):
    return ctx.run(["restic", "-q", "--cacert", CA, "-r", "swift:resticc:/repo", *args])


def restic_cycle(ctx):
    src = ctx.path("rsrc")
    os.makedirs(src, exist_ok=True)
    shutil.copy(ctx.path("f3m.bin"), os.path.join(src, "f3m.bin"))
    shutil.copy(ctx.path("small.txt"), os.path.join(src, "s.txt"))
    restic(ctx, "init")
    restic(ctx, "backup", src)
    restic(ctx, "backup", src)
    restic(ctx, "check", "--read-data")
    restic(ctx, "restore", "latest", "--target", ctx.path("rrst"))
    same(os.path.join(src, "f3m.bin"), ctx.path("rrst") + src + "/f3m.bin")
    restic(ctx, "forget", "--keep-last", "1", "--prune")


def sw_second_account(ctx):
    """The gateway's second user, bound to the second upstream account (an application credential
    of the same Keystone project): auth, the upstream's storage URL, an upload the first sees."""
    user, key = ctx.second
    auth = ["swift", "-A", ctx.auth, "-U", user, "-K", key]
    out = ctx.run([*auth, "auth"]).stdout.decode()
    url = [l for l in out.splitlines() if "OS_STORAGE_URL" in l][0].split("=", 1)[1]
    check(url.startswith(ctx.gateway) == (ctx.mode == "proxy"), f"storage URL {url}")
    if ctx.mode == "redirect" and ctx.storage_url:
        check(url == ctx.storage_url, f"storage URL {url}, upstream's is {ctx.storage_url}")
    ctx.run([*auth, "upload", "swc2nd", "small.txt"])
    swift(ctx, "download", "swc2nd", "small.txt", "-o", "second.out")
    same(ctx.path("small.txt"), ctx.path("second.out"))


SCENARIOS = [
    ("swift", "auth+stat", sw_auth_stat),
    ("swift", "upload small", sw_upload_small),
    ("swift", "utf-8/space/%/+ names", sw_names),
    ("swift", "listing pages+delimiter", sw_listing),
    ("swift", "over max_file_size: 413", sw_too_big),
    ("swift", "segmented DLO", sw_dlo),
    ("swift", "segmented SLO", sw_slo),
    ("swift", "chunked (stdin)", sw_chunked),
    ("swift", "range download", sw_range),
    ("swift", "copy + metadata POST", sw_copy_post),
    ("swift", "delete incl. bulk", sw_delete_bulk),
    ("swift", "long run over expiries", sw_long_run),
    ("swift", "2nd account (app credential)", sw_second_account),
    ("swift-api", "objects (file, generator, range, post, copy, delete)", api_objects),
    ("swift-api", "listing: 3 pages by marker, delimiter", api_listing_pages),
    ("swift-api", "one token across expiries", api_token_expiry),
    ("rclone", "auth+list", rc_auth_list),
    ("rclone", "small + names + md5", rc_small_and_names),
    ("rclone", "DLO chunked + rcat", rc_chunked_dlo),
    ("rclone", "range", rc_range),
    ("rclone", "check + delete", rc_check_delete),
    ("rclone", "long run over expiries", rc_long_run),
    ("duplicity", "full/incr/verify/restore", dup_cycle),
    ("restic", "init/backup/check/restore/prune", restic_cycle),
]
ALL = [fn for _, _, fn in SCENARIOS if fn is not sw_second_account]
# The upstream-account stages: the whole matrix for Keystone password auth, subsets elsewhere.
V1_PROXY = [sw_auth_stat, sw_upload_small, sw_too_big, sw_dlo, sw_slo, sw_long_run, api_objects, api_token_expiry,
            rc_auth_list, rc_small_and_names, rc_long_run, restic_cycle]
KS_APP = [sw_auth_stat, sw_upload_small, sw_dlo, sw_long_run, rc_auth_list, rc_small_and_names]
KS_SHARED = [sw_auth_stat, sw_upload_small, sw_long_run, api_token_expiry, rc_auth_list, rc_long_run]
KS_REDIR = [sw_auth_stat, sw_upload_small, sw_names, sw_second_account, api_objects, api_token_expiry, rc_auth_list,
            rc_small_and_names]


def make_files(work):
    with open(os.path.join(work, "small.txt"), "w") as f:
        f.write("hello swiftgate\n")
    for name, size in (("f3m.bin", 3_000_000), ("f11m.bin", 11_000_000)):
        with open(os.path.join(work, name), "wb") as f:
            f.write(os.urandom(size))


class Run:
    """Results of the whole run: (stage, client, scenario, ok, seconds, detail), the per-stage
    token request figures, and the gateways whose logs a failure shows."""

    def __init__(self, base):
        self.base = base
        self.results = []
        self.tokens = []
        self.logs = []
        self.only = os.environ.get("COMPAT_ONLY")  # e.g. "rclone" while debugging

    def record(self, stage, client, name, fn, *args):
        t0 = time.monotonic()
        try:
            fn(*args)
            self.results.append((stage, client, name, True, time.monotonic() - t0, ""))
        except Exception as e:  # a failed scenario; the suite goes on
            detail = str(e) if isinstance(e, Failed) else traceback.format_exc()
            self.results.append((stage, client, name, False, time.monotonic() - t0, detail))
        r = self.results[-1]
        print(f"  {stage:8} {client:10} {name:45} {'pass' if r[3] else 'FAIL'} {r[4]:6.1f}s", flush=True)
        return r[3]

    def guard(self, stage, what, fn, *args, **kw):
        """Runs set-up or a whole stage: a failure is recorded (and counted), success is not."""
        t0 = time.monotonic()
        try:
            fn(*args, **kw)
            return True
        except Exception as e:
            detail = str(e) if isinstance(e, Failed) else traceback.format_exc()
            self.results.append((stage, "suite", what, False, time.monotonic() - t0, detail))
            print(f"  {stage:8} {'suite':10} {what:45} FAIL {time.monotonic() - t0:6.1f}s", flush=True)
            return False

    def scenarios(self, stage, ctx, chosen):
        for client, name, fn in SCENARIOS:
            if fn in chosen and not (self.only and self.only not in client):
                self.record(stage, client, name, fn, ctx)

    def workdir(self, stage):
        work = os.path.join(self.base, f"work-{stage}")
        os.makedirs(work)
        make_files(work)
        return work

    def account_stage(self, stage, gateway, chosen, token_log, token_life, stated_life=None, storage_url=None, second=None,
                      clean=None):
        """One gateway with upstream accounts: the scenarios while counting the gateway's upstream
        token requests, then check-config --online (after: tempauth hands out the token it gave
        check-config again, for what is left of its life, which would cost the gateway a renewal).
        stated_life: the token life upstream states, when shorter than the real one."""
        self.logs.extend(getattr(gateway, "logs", [gateway.log]))
        stated_life = stated_life or token_life
        if clean:
            clean()
        work = self.workdir(stage)
        token_log.mark()
        t0 = time.monotonic()
        try:
            if not self.guard(stage, "swiftgate serve starts", gateway.start):
                return
            ctx = Ctx(gateway.mode, gateway.url, work, token_life=token_life, storage_url=storage_url)
            ctx.second = second
            self.scenarios(stage, ctx, chosen)
        finally:
            gateway.stop()
        duration = time.monotonic() - t0
        mine, agents, others = token_log.since_mark()
        lifetimes = max(1, math.ceil(duration / stated_life))
        periods = max(1, math.ceil(duration / (stated_life * RENEW_SHARE)))
        limit = (periods + 2) * len(gateway.accounts)
        self.tokens.append((stage, mine, others, duration, stated_life, lifetimes, periods, len(gateway.accounts), limit,
                            agents))
        print(f"    {stage}: {mine} upstream token requests by the gateway ({others} by Swift's authtoken) in "
              f"{duration:.0f}s = {lifetimes} token lifetimes x {len(gateway.accounts)} accounts, "
              f"{mine / lifetimes / len(gateway.accounts):.2f} per lifetime per account (limit {limit}: {periods} renewal "
              f"periods + 2, x accounts); {agents}", flush=True)

        def few():
            check(mine <= limit, f"{mine} token requests for {lifetimes} lifetimes ({periods} renewal periods) x "
                                 f"{len(gateway.accounts)} accounts (limit {limit}): {agents}")
            check(mine >= 1, "no token request counted: is the log's format the one expected?")
        self.record(stage, "swiftgate", "token requests <= (renewals+2) x accounts", few)

        def online():
            rc, out = gateway.check_online()
            print("    check-config --online: " + " | ".join(l.strip() for l in out.strip().splitlines()), flush=True)
            check(rc == 0, f"check-config --online -> {rc}\n{out}")
            if storage_url:
                check(storage_url in out, f"{storage_url} not in\n{out}")
        self.record(stage, "swiftgate", "check-config --online", online)

    # ------------------------------------------------------------ stages

    def hubic_stage(self, stack):
        for mode in ("proxy", "redirect"):
            # Both gateways front the same upstream account: start each mode from an empty one.
            subprocess.run(["swift", "-A", stack.swift.auth_url, "-U", "test:tester", "-K", "testing", "delete", "--all"],
                           capture_output=True, check=False, timeout=120)
            ctx = Ctx(mode, stack.gateways[mode], self.workdir(mode))
            self.scenarios(mode, ctx, ALL)

    def v1_stage(self, stack):
        stack.stop_gateways()
        subprocess.run(["swift", "-A", stack.swift.auth_url, "-U", "test:tester", "-K", "testing", "delete", "--all"],
                       capture_output=True, check=False, timeout=120)
        account = {"name": "rgw", "provider": "swift-v1", "auth_url": stack.swift.auth_url, "user": "test:tester",
                   "key": "testing"}
        gw = Gateway(self.base, "v1-proxy", "proxy", [account], [(GW_USER, GW_KEY, "rgw")])
        url = stack.swift.auth_url.replace("/auth/v1.0", "/v1/AUTH_test")
        # tempauth states a token's life as whole seconds left, rounded down: 4 s for its 5 s
        # tokens, and the gateway renews by what it is told.
        self.guard("v1-proxy", "the stage ran to its end", self.account_stage, "v1-proxy", gw, V1_PROXY,
                   TokenLog(stack.swift.log_path(), "v1"), TOKEN_LIFE, stated_life=TOKEN_LIFE - 1, storage_url=url)

    def keystone_stage(self):
        t0 = time.monotonic()
        ksbase = os.path.join(self.base, "keystone")
        env = dict(os.environ, BASE=ksbase, TOKEN_EXPIRATION=str(KS_TOKEN_LIFE), MAX_FILE_SIZE=str(MAX_FILE),
                   LISTING_LIMIT="10000")
        for var in ("KS_PORT", "PROXY_PORT", "MEMCACHED_PORT", "OBJECT_PORT", "CONTAINER_PORT", "ACCOUNT_PORT"):
            env[var] = str(swift_upstream.free_port())
        try:
            def start():
                r = subprocess.run(["bash", os.path.join(HERE, "keystone_aio.sh")], env=env, capture_output=True, text=True,
                                   timeout=300)
                logs = ""
                for name in ("startup.log", "keystone-manage.log", "uwsgi.log"):
                    path = os.path.join(ksbase, "log", name)
                    if r.returncode != 0 and os.path.exists(path):
                        logs += f"\n--- {name}\n" + "".join(open(path, errors="replace").readlines()[-15:])
                check(r.returncode == 0, f"keystone_aio.sh -> {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}{logs}")
            if not self.guard("keystone", "start Keystone + Swift (keystone_aio.sh)", start):
                return
            ks = dict(line.split("=", 1) for line in open(os.path.join(ksbase, "env")).read().splitlines() if "=" in line)
            startup = open(os.path.join(ksbase, "log", "startup.log")).read().split()
            print(f"keystone: up in {time.monotonic() - t0:.1f}s ({' '.join(startup)}), auth {ks['KS_AUTH_URL']}, "
                  f"swift {ks['SWIFT_URL']}, tokens {KS_TOKEN_LIFE}s", flush=True)
            token_log = TokenLog(ks["KS_REQUEST_LOG"], "keystone")

            def clean():
                # The stages share one Keystone project, so one Swift account: each starts empty.
                subprocess.run(["swift", "--auth-version", "3", "--os-auth-url", ks["KS_AUTH_URL"], "--os-username", ks["KS_USER"],
                                "--os-password", ks["KS_PASSWORD"], "--os-project-name", ks["KS_PROJECT"],
                                "--os-user-domain-name", ks["KS_DOMAIN"], "--os-project-domain-name", ks["KS_DOMAIN"],
                                "delete", "--all"], capture_output=True, check=False, timeout=120)
            password = {"name": "ks", "provider": "keystone", "auth_url": ks["KS_AUTH_URL"], "username": ks["KS_USER"],
                        "user_domain": ks["KS_DOMAIN"], "password": ks["KS_PASSWORD"], "project": ks["KS_PROJECT"],
                        "region": ks["KS_REGION"], "interface": "public"}
            app = {"name": "ksapp", "provider": "keystone", "auth_url": ks["KS_AUTH_URL"],
                   "application_credential_id": ks["KS_APP_CRED_ID"],
                   "application_credential_secret": ks["KS_APP_CRED_SECRET"]}
            gw = Gateway(self.base, "ks-pw", "proxy", [password], [(GW_USER, GW_KEY, "ks")])
            self.guard("ks-pw", "the stage ran to its end", self.account_stage, "ks-pw", gw, ALL, token_log, KS_TOKEN_LIFE,
                       storage_url=ks["SWIFT_URL"], clean=clean)
            gw = Gateway(self.base, "ks-app", "proxy", [app], [(GW_USER, GW_KEY, "ksapp")])
            self.guard("ks-app", "the stage ran to its end", self.account_stage, "ks-app", gw, KS_APP, token_log, KS_TOKEN_LIFE,
                       storage_url=ks["SWIFT_URL"], clean=clean)
            # Redirect mode, two accounts: the project by id and the secrets from files this time.
            secrets = os.path.join(self.base, "secrets")
            os.makedirs(secrets, mode=0o700, exist_ok=True)
            for name, value in (("ks-password", ks["KS_PASSWORD"]), ("ks-app-secret", ks["KS_APP_CRED_SECRET"])):
                with open(os.path.join(secrets, name), "w") as f:
                    f.write(value + "\n")
            by_id = {k: v for k, v in password.items() if k not in ("password", "project")}
            by_id.update({"project_id": ks["KS_PROJECT_ID"], "project_domain": ks["KS_DOMAIN"],
                          "password_file": os.path.join(secrets, "ks-password")})
            app_file = {k: v for k, v in app.items() if k != "application_credential_secret"}
            app_file["application_credential_secret_file"] = os.path.join(secrets, "ks-app-secret")
            gw = Gateway(self.base, "ks-redir", "redirect", [by_id, app_file],
                         [(GW_USER, GW_KEY, "ks"), (GW_USER2, GW_KEY2, "ksapp")])
            self.guard("ks-redir", "the stage ran to its end", self.account_stage, "ks-redir", gw, KS_REDIR, token_log,
                       KS_TOKEN_LIFE, storage_url=ks["SWIFT_URL"], second=(GW_USER2, GW_KEY2), clean=clean)
            # Three gateways sharing Redis behind nginx: Keystone's token requests must stay
            # within one gateway's limit, where three renewing alone would triple them.
            group = SharedGateways(self.base, "ks-shared", [password], [(GW_USER, GW_KEY, "ks")])
            self.guard("ks-shared", "the stage ran to its end", self.account_stage, "ks-shared", group, KS_SHARED,
                       token_log, KS_TOKEN_LIFE, storage_url=ks["SWIFT_URL"], clean=clean)
            print(f"    ks-shared: {group.shared_renewals()} renewals taken from another instance", flush=True)
        finally:
            subprocess.run(["bash", os.path.join(HERE, "keystone_aio_stop.sh")], env=env, capture_output=True, timeout=60)
            self.keystone_wall = time.monotonic() - t0
            print(f"keystone stage: {self.keystone_wall:.0f} s", flush=True)

    # ------------------------------------------------------------ report

    def report(self, started):
        print()
        stages = [c for c in COLUMNS if any(r[0] == c for r in self.results)]
        rows = [(client, name) for client, name, _ in SCENARIOS]
        rows += [("swiftgate", "token requests <= (renewals+2) x accounts"), ("swiftgate", "check-config --online")]
        rows += list(dict.fromkeys((r[1], r[2]) for r in self.results if r[0] in stages and (r[1], r[2]) not in rows))
        print(f"{'client':10} {'scenario':48}" + "".join(f" {s:>11}" for s in stages))
        for client, name in rows:
            cells = []
            for stage in stages:
                r = [x for x in self.results if x[0] == stage and x[1] == client and x[2] == name]
                cells.append(f"{'pass' if r[0][3] else 'FAIL'} {r[0][4]:5.1f}s" if r else "-")
            if any(c != "-" for c in cells):
                print(f"{client:10} {name:48}" + "".join(f" {c:>11}" for c in cells))
        others = [r for r in self.results if r[0] not in stages]
        for stage, client, name, ok, dt, _ in others:
            print(f"{client:10} {name:48} {stage}: {'pass' if ok else 'FAIL'} {dt:.1f}s")
        if self.tokens:
            print(f"\nupstream token requests by the gateway (Keystone: POST /v3/auth/tokens not by Swift's authtoken; "
                  f"tempauth: GET /auth/v1.0)")
            print(f"{'stage':9} {'requests':>8} {'duration':>9} {'life':>5} {'lifetimes':>9} {'renewals':>8} {'accounts':>8} "
                  f"{'per life/acct':>13} {'limit':>5}  authtoken's own")
            for stage, mine, others_n, duration, life, lifetimes, periods, accounts, limit, _ in self.tokens:
                print(f"{stage:9} {mine:8} {duration:8.0f}s {life:4}s {lifetimes:9} {periods:8} {accounts:8} "
                      f"{mine / lifetimes / accounts:13.2f} {limit:5}  {others_n if stage != 'v1-proxy' else '-'}")
        failures = [r for r in self.results if not r[3]]
        for stage, client, name, _, _, detail in failures:
            print(f"\nFAILED {client} / {name} / {stage}:\n{detail}")
        if failures:
            for log in ["emulator.log", "gateway-proxy.log", "gateway-redirect.log"] + self.logs:
                path = os.path.join(self.base, log)
                if os.path.exists(path):
                    print(f"\n--- tail of {os.path.basename(log)}\n" + "".join(open(path, errors="replace").readlines()[-15:]))
        if hasattr(self, "keystone_wall"):
            print(f"\nkeystone stage: {self.keystone_wall:.0f} s")
        print(f"\ntotal {time.monotonic() - started:.0f}s")
        print(f"{len(self.results) - len(failures)} passed, {len(failures)} failed")
        return 1 if failures or not self.results else 0


def main():
    # A SIGTERM (timeout, CI) unwinds like ^C, so that everything started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    groups = [g.strip() for g in (os.environ.get("COMPAT_STAGES") or ",".join(STAGE_GROUPS)).split(",") if g.strip()]
    unknown = [g for g in groups if g not in STAGE_GROUPS]
    if unknown:
        print(f"COMPAT_STAGES: unknown {unknown}; known: {', '.join(STAGE_GROUPS)}")
        return 2
    base = tempfile.mkdtemp(prefix="swiftgate-compat-")
    run = Run(base)
    started = time.monotonic()
    try:
        if "hubic" in groups or "v1" in groups:
            stack = Stack(base)
            try:
                if run.guard("setup", "start tempauth Swift (+ HubiC gateways)", stack.start, "hubic" in groups):
                    print(f"setup: {time.monotonic() - started:.1f}s (swift {stack.swift.auth_url}, gateways {stack.gateways})",
                          flush=True)
                    if "hubic" in groups:
                        run.guard("hubic", "the stage ran to its end", run.hubic_stage, stack)
                    if "v1" in groups:
                        run.guard("v1", "the stage ran to its end", run.v1_stage, stack)
            finally:
                stack.stop()
        if "keystone" in groups:
            run.guard("keystone", "the stage ran to its end", run.keystone_stage)
        return run.report(started)
    finally:
        if os.environ.get("COMPAT_KEEP"):  # keep the logs and configs for a look
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
