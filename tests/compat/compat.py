#!/usr/bin/python3
"""Real Swift, real clients: the compatibility suite.

Starts a real single-node OpenStack Swift (tempauth, 5 s tokens, 10 MiB max_file_size), the
HubiC emulator handing out that Swift's real tokens, and `swiftgate serve` over TLS in proxy
mode and in redirect mode; then drives python-swiftclient (CLI and Python API), rclone,
duplicity and restic through each gateway. Every scenario checks content byte for byte.
Prints a table client x scenario x mode and `N passed, N failed`; exits non-zero on failure.

Run with Debian's /usr/bin/python3 (it imports swiftclient). SWIFTGATE_BIN names the binary.
"""

import hashlib
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swift_upstream  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SWIFTGATE_BIN") or os.path.join(ROOT, "target", "debug", "swiftgate")
CA = os.path.join(ROOT, "certs-dev", "ca.crt")
GW_USER, GW_KEY = "gw:user", "gw-key-0123"
HUBIC_LOGIN, HUBIC_PASSWORD = "u@example.com", "hubic-pw"
TOKEN_LIFE = 5
MAX_FILE = 10 * 1024 * 1024
WEIRD = "dir a/sub dir/ünï cødé+%25 plus.txt"


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


class Stack:
    """Swift + emulator + two gateways; everything started is stopped by stop()."""

    def __init__(self, base):
        self.base = base
        self.procs = []
        self.swift = swift_upstream.Swift(os.path.join(base, "swift"), token_life=TOKEN_LIFE, max_file_size=MAX_FILE,
                                          listing_limit=10000)
        self.gateways = {}

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        line = p.stdout.readline().strip()
        check(line.startswith("http"), f"{args[1]} printed {line!r}")
        return line

    def start(self):
        self.swift.start()
        ports = {mode: swift_upstream.free_port() for mode in ("proxy", "redirect")}
        apps = {mode: (f"api_hubic_compat{mode}", f"secret-{mode}") for mode in ports}
        args = [BIN, "emulate", "--listen", "127.0.0.1:0", "--swift-token-ttl", str(TOKEN_LIFE),
                "--swift-auth", self.swift.auth_url, "--swift-user", "test:tester", "--swift-key", "testing",
                "--user", f"{HUBIC_LOGIN}:{HUBIC_PASSWORD}"]
        for mode, (cid, secret) in apps.items():
            args += ["--app", f"{cid}:{secret}:https://localhost:{ports[mode]}/callback"]
        log = open(os.path.join(self.base, "emulator.log"), "w")
        emulator = self.spawn(args, stderr=log)
        key_hash = subprocess.run([BIN, "hash-key"], input=GW_KEY + "\n", capture_output=True, text=True, check=True).stdout.strip()
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
                                 input=HUBIC_PASSWORD + "\n", capture_output=True, text=True)
            check(reg.returncode == 0, f"register ({mode}): {reg.stderr}")
            log = open(os.path.join(self.base, f"gateway-{mode}.log"), "w")
            url = self.spawn([BIN, "serve", "--config", config], stderr=log)
            swift_upstream.wait_ok(url + "/healthz", 30, context=ctx)
            self.gateways[mode] = url

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.swift.stop()


class Ctx:
    """What a scenario gets: the gateway URL, a scratch dir, the test files, an environment."""

    def __init__(self, mode, gateway, work, files):
        self.mode = mode
        self.gateway = gateway
        self.auth = gateway + "/auth/v1.0"
        self.work = work
        self.files = files
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_", "SWIFT_"))}
        env.update({
            "ST_AUTH": self.auth, "ST_USER": GW_USER, "ST_KEY": GW_KEY,
            "SWIFT_AUTHURL": self.auth, "SWIFT_USERNAME": GW_USER, "SWIFT_PASSWORD": GW_KEY, "SWIFT_AUTHVERSION": "1",
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
    end = time.monotonic() + 3 * TOKEN_LIFE
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
    return swiftclient.Connection(authurl=ctx.auth, user=GW_USER, key=GW_KEY, retries=2, starting_backoff=0.2,
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
    time.sleep(TOKEN_LIFE + 2)  # let the upstream token expire (workload shaping)
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
    env = {"RCLONE_CONFIG_GW_TYPE": "swift", "RCLONE_CONFIG_GW_USER": GW_USER, "RCLONE_CONFIG_GW_KEY": GW_KEY,
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
    os.makedirs(ctx.path("rlong"), exist_ok=True)
    for i in range(6):
        with open(ctx.path(f"rlong/f{i}"), "wb") as f:
            f.write(os.urandom(300_000))
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


def make_files(work):
    with open(os.path.join(work, "small.txt"), "w") as f:
        f.write("hello swiftgate\n")
    for name, size in (("f3m.bin", 3_000_000), ("f11m.bin", 11_000_000)):
        with open(os.path.join(work, name), "wb") as f:
            f.write(os.urandom(size))


def main():
    only = os.environ.get("COMPAT_ONLY")  # e.g. "rclone" while debugging
    base = tempfile.mkdtemp(prefix="swiftgate-compat-")
    stack = Stack(base)
    results = []
    started = time.monotonic()
    try:
        stack.start()
        print(f"setup: {time.monotonic() - started:.1f}s (swift {stack.swift.auth_url}, gateways {stack.gateways})", flush=True)
        for mode in ("proxy", "redirect"):
            # Both gateways front the same upstream account: start each mode from an empty one.
            subprocess.run(["swift", "-A", stack.swift.auth_url, "-U", "test:tester", "-K", "testing", "delete", "--all"],
                           capture_output=True, check=False)
            work = os.path.join(base, f"work-{mode}")
            os.makedirs(work)
            make_files(work)
            ctx = Ctx(mode, stack.gateways[mode], work, None)
            for client, name, fn in SCENARIOS:
                if only and only not in client:
                    continue
                t0 = time.monotonic()
                try:
                    fn(ctx)
                    results.append((client, name, mode, True, time.monotonic() - t0, ""))
                except Exception as e:  # a failed scenario; the suite goes on
                    detail = str(e) if isinstance(e, Failed) else traceback.format_exc()
                    results.append((client, name, mode, False, time.monotonic() - t0, detail))
                r = results[-1]
                print(f"  {mode:8} {client:10} {name:45} {'pass' if r[3] else 'FAIL'} {r[4]:6.1f}s", flush=True)
    finally:
        stack.stop()
    print()
    print(f"{'client':10} {'scenario':48} {'proxy':>14} {'redirect':>14}")
    seen = []
    for client, name, _ in SCENARIOS:
        cells = []
        for mode in ("proxy", "redirect"):
            r = [x for x in results if x[0] == client and x[1] == name and x[2] == mode]
            cells.append(f"{'pass' if r[0][3] else 'FAIL'} {r[0][4]:5.1f}s" if r else "-")
        if any(c != "-" for c in cells):
            seen.append(1)
            print(f"{client:10} {name:48} {cells[0]:>14} {cells[1]:>14}")
    failures = [r for r in results if not r[3]]
    for client, name, mode, _, _, detail in failures:
        print(f"\nFAILED {client} / {name} / {mode}:\n{detail}")
    if failures:
        for log in ("emulator.log", "gateway-proxy.log", "gateway-redirect.log"):
            path = os.path.join(base, log)
            if os.path.exists(path):
                print(f"\n--- tail of {log}\n" + "".join(open(path, errors="replace").readlines()[-15:]))
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    print(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    shutil.rmtree(base, ignore_errors=True)
    return 1 if failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
