"""A real single-node OpenStack Swift (Debian packages, tempauth) on 127.0.0.1 and free ports,
for the compatibility suite. Everything lives under one directory; stop() ends every process.

Not a production Swift: one replica, one device per ring, no background daemons.
"""

import os
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(url, seconds, context=None):
    """Polls url until it answers 2xx, with a deadline."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if 200 <= r.status < 300:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)  # poll interval; the deadline bounds the wait
    raise RuntimeError(f"{url} did not come up: {last}")


class Swift:
    def __init__(self, base, token_life=5, max_file_size=10 * 1024 * 1024, listing_limit=20):
        self.base = base
        self.token_life = token_life
        self.max_file_size = max_file_size
        self.listing_limit = listing_limit
        self.procs = []
        self.ports = {name: free_port() for name in ("proxy", "object", "container", "account", "memcached")}
        self.auth_url = f"http://127.0.0.1:{self.ports['proxy']}/auth/v1.0"

    def _conf(self, name, port, pipeline, extra):
        etc = os.path.join(self.base, "etc")
        text = (
            "[DEFAULT]\n"
            f"swift_dir = {etc}\n"
            f"devices = {os.path.join(self.base, 'srv')}\n"
            "mount_check = false\n"
            "bind_ip = 127.0.0.1\n"
            f"bind_port = {port}\n"
            "workers = 1\n"
            f"user = {os.environ.get('USER') or 'root'}\n"
            "log_level = INFO\n"
            f"[pipeline:main]\npipeline = {pipeline}\n" + extra
        )
        path = os.path.join(etc, f"{name}-server.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self):
        etc = os.path.join(self.base, "etc")
        for d in (etc, os.path.join(self.base, "srv", "d1"), os.path.join(self.base, "log")):
            os.makedirs(d, exist_ok=True)
        swift_conf = (
            "[swift-hash]\nswift_hash_path_suffix = swiftgate-compat\nswift_hash_path_prefix = swiftgate\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
            f"[swift-constraints]\nmax_file_size = {self.max_file_size}\n"
            f"container_listing_limit = {self.listing_limit}\naccount_listing_limit = {self.listing_limit}\n"
        )
        # Debian's 2.30 servers read /etc/swift/swift.conf whatever swift_dir says.
        os.makedirs("/etc/swift", exist_ok=True)
        for path in ("/etc/swift/swift.conf", os.path.join(etc, "swift.conf")):
            with open(path, "w") as f:
                f.write(swift_conf)
        for ring in ("object", "container", "account"):
            builder = os.path.join(etc, f"{ring}.builder")
            for args in (["create", "6", "1", "1"], ["add", f"r1z1-127.0.0.1:{self.ports[ring]}/d1", "1"], ["rebalance"]):
                subprocess.run(["swift-ring-builder", builder, *args], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=etc)
        confs = {}
        for ring in ("object", "container", "account"):
            confs[ring] = self._conf(
                ring, self.ports[ring], f"healthcheck {ring}-server",
                f"[app:{ring}-server]\nuse = egg:swift#{ring}\n[filter:healthcheck]\nuse = egg:swift#healthcheck\n",
            )
        filters = "".join(
            f"[filter:{f}]\nuse = egg:swift#{f}\n"
            for f in ("catch_errors", "gatekeeper", "healthcheck", "proxy_logging", "listing_formats", "bulk", "tempurl", "copy", "slo", "dlo", "symlink")
        )
        confs["proxy"] = self._conf(
            "proxy", self.ports["proxy"],
            "catch_errors gatekeeper healthcheck proxy_logging cache listing_formats bulk tempurl tempauth copy slo dlo symlink proxy_logging proxy-server",
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\nallow_account_management = true\n"
            "[filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = testing .admin\n"
            f"token_life = {self.token_life}\n"
            f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{self.ports['memcached']}\n" + filters,
        )
        log = lambda name: open(os.path.join(self.base, "log", f"{name}.log"), "w")
        user = os.environ.get("USER") or "root"
        self.procs.append(subprocess.Popen(["memcached", "-u", user, "-l", "127.0.0.1", "-p", str(self.ports["memcached"]), "-U", "0", "-m", "64"], stdout=log("memcached"), stderr=subprocess.STDOUT))
        for name in ("object", "container", "account", "proxy"):
            self.procs.append(subprocess.Popen([f"swift-{name}-server", confs[name], "-v"], stdout=log(name), stderr=subprocess.STDOUT))
        for name in ("object", "container", "account", "proxy"):
            wait_ok(f"http://127.0.0.1:{self.ports[name]}/healthcheck", 60)

    def log_path(self):
        return os.path.join(self.base, "log", "proxy.log")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
