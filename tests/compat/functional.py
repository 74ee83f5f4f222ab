#!/usr/bin/python3
"""OpenStack Swift 2.30.1's own functional suite (`test/functional`) against a real single-node
Swift, directly or through `swiftgate serve` in proxy mode: work in progress for issue 27, not
yet a stage of tests/all.sh (it has no list of expected failures yet).

Usage: functional.py direct|gateway OUTDIR [pytest arguments]; default arguments run
`test/functional` without s3api. Prints `<mode>: rc=N in Ss`; OUTDIR gets pytest.log and
junit.xml (and gateway.log). Needs Debian's python3-swift 2.30.1, python3-pytest and
python3-mock; fetches the 2.30.1 sdist (for its tests) from PyPI into SWIFT_SDIST_DIR
(default ~/.cache/swiftgate) once. SWIFTGATE_BIN names the gateway binary.

The Swift is swift_upstream.py's with the SAIO proxy pipeline and the suite's tempauth users
(test:tester and test2:tester2 admins of their accounts, test:tester3 not); its devices are on
/dev/shm, a tmpfs: on ext4, 90 metadata items make Swift itself answer 503. Through the
gateway, test:tester and test:tester3 reach account `test` and test2:tester2 account `test2`,
each a `swift-v1` account with the owner's credentials.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swift_upstream  # noqa: E402

GATEWAY = os.environ.get("SWIFTGATE_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "swiftgate")
SDIST_DIR = os.environ.get("SWIFT_SDIST_DIR") or os.path.expanduser("~/.cache/swiftgate")


def sdist():
    """The 2.30.1 sdist's directory, fetched from PyPI the first time."""
    tree = os.path.join(SDIST_DIR, "swift-2.30.1")
    if not os.path.isdir(os.path.join(tree, "test", "functional")):
        os.makedirs(SDIST_DIR, exist_ok=True)
        subprocess.run(["/usr/bin/python3", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        "-d", SDIST_DIR, "swift==2.30.1"], check=True, timeout=300)
        subprocess.run(["tar", "xzf", os.path.join(SDIST_DIR, "swift-2.30.1.tar.gz"), "-C", SDIST_DIR],
                       check=True)
    return tree


class SaioSwift(swift_upstream.Swift):
    """The compat Swift with the SAIO pipeline and the suite's tempauth users."""

    def start(self):
        orig = self._conf

        def conf(name, port, pipeline, extra):
            if name != "proxy":
                return orig(name, port, pipeline, extra)
            filters = "".join(
                f"[filter:{f}]\nuse = egg:swift#{f}\n"
                for f in ("catch_errors", "gatekeeper", "healthcheck", "proxy_logging", "listing_formats", "bulk",
                          "tempurl", "copy", "slo", "dlo", "symlink", "staticweb", "container_quotas",
                          "account_quotas", "crossdomain", "formpost")
            )
            pipeline = ("catch_errors gatekeeper healthcheck proxy_logging cache listing_formats bulk tempurl "
                        "crossdomain formpost tempauth staticweb copy container_quotas account_quotas slo dlo "
                        "versioned_writes symlink proxy_logging proxy-server")
            extra = (
                "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\nallow_account_management = true\n"
                "[filter:tempauth]\nuse = egg:swift#tempauth\n"
                "user_admin_admin = admin .admin .reseller_admin\n"
                "user_test_tester = testing .admin\nuser_test2_tester2 = testing2 .admin\n"
                "user_test_tester3 = testing3\nuser_test5_tester5 = testing5 service\n"
                f"token_life = {self.token_life}\n"
                "[filter:versioned_writes]\nuse = egg:swift#versioned_writes\nallow_versioned_writes = true\n"
                f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{self.ports['memcached']}\n"
                + filters
            )
            return orig(name, port, pipeline, extra)

        self._conf = conf
        super().start()


def gateway_config(base, swift, port):
    from subprocess import run
    hashes = {}
    for user, key in (("test:tester", "testing"), ("test2:tester2", "testing2"), ("test:tester3", "testing3")):
        hashes[user] = run([GATEWAY, "hash-key"], input=key, capture_output=True, text=True, check=True).stdout.strip()
    text = f"""listen = "127.0.0.1:{port}"
state_dir = "{base}/state"

[[account]]
name = "test"
provider = "swift-v1"
auth_url = "{swift.auth_url}"
user = "test:tester"
key = "testing"

[[account]]
name = "test2"
provider = "swift-v1"
auth_url = "{swift.auth_url}"
user = "test2:tester2"
key = "testing2"

[[user]]
name = "test:tester"
key_hash = "{hashes['test:tester']}"
account = "test"

[[user]]
name = "test:tester3"
key_hash = "{hashes['test:tester3']}"
account = "test"

[[user]]
name = "test2:tester2"
key_hash = "{hashes['test2:tester2']}"
account = "test2"
"""
    path = os.path.join(base, "gateway.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    mode, out = sys.argv[1], sys.argv[2]
    modules = sys.argv[3:] or ["test/functional", "--ignore=test/functional/s3api"]
    os.makedirs(out, exist_ok=True)
    tree = sdist()
    base = tempfile.mkdtemp(prefix="func-", dir="/dev/shm")
    swift = SaioSwift(base, token_life=86400, max_file_size=5 * 1024 * 1024 * 1024 + 2, listing_limit=10000)
    gw = None
    try:
        swift.start()
        auth = swift.auth_url
        if mode == "gateway":
            port = swift_upstream.free_port()
            os.makedirs(os.path.join(base, "state"))
            conf = gateway_config(base, swift, port)
            gw = subprocess.Popen([GATEWAY, "serve", "--config", conf], stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(out, "gateway.log"), "w"))
            gw.stdout.readline()  # the public URL, printed once it serves
            auth = f"http://127.0.0.1:{port}/auth/v1.0"
        host_port = auth.split("/")[2]
        test_conf = os.path.join(base, "test.conf")
        with open(test_conf, "w") as f:
            f.write(f"""[func_test]
auth_uri = {auth}
auth_host = {host_port.split(':')[0]}
auth_port = {host_port.split(':')[1]}
auth_ssl = no
auth_prefix = /auth/
account = test
username = tester
password = testing
account2 = test2
username2 = tester2
password2 = testing2
username3 = tester3
password3 = testing3
collate = C
""")
        env = dict(os.environ, SWIFT_TEST_CONFIG_FILE=test_conf, PYTHONPATH=tree)
        started = time.monotonic()
        result = subprocess.run(
            ["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
             f"--junitxml={out}/junit.xml", *modules],
            cwd=tree, env=env, stdout=open(os.path.join(out, "pytest.log"), "w"), stderr=subprocess.STDOUT,
            timeout=1500,
        )
        print(f"{mode}: rc={result.returncode} in {time.monotonic() - started:.0f}s")
    finally:
        if gw:
            gw.terminate()
            gw.wait()
        swift.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
