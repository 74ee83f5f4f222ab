#!/usr/bin/python3
"""OpenStack Swift 2.30.1's own functional suite (`test/functional`, without s3api) against a
real single-node Swift, through `swiftgate serve` in proxy mode (or directly with --direct),
each module against a fresh stack. A stage of tests/all.sh.

Usage: functional.py [--direct] [--out DIR] [--expected FILE] [MODULE ...]

Each test's outcome comes from pytest's JUnit report. Through the gateway, the tests listed in
FILE (default functional_expected.txt beside this file; one test id and its reason per line)
are expected to fail: the run fails on any other failure, and on a listed test that passes or
no longer exists, so that the list stays true. Directly, every failure counts. It prints
`N passed, N failed, N expected-failed, N skipped` and exits 1 if the run failed. DIR (default
a new temporary directory, kept) gets each module's pytest.log, junit.xml and gateway.log.

Needs Debian's python3-swift 2.30.1, python3-pytest and python3-mock; fetches the 2.30.1 sdist
(for its tests) from PyPI into SWIFT_SDIST_DIR (default ~/.cache/swiftgate) once.
SWIFTGATE_BIN names the gateway binary (default target/debug/swiftgate).

The Swift is swift_upstream.py's with the SAIO proxy pipeline (staticweb, domain_remap with
storage domain example.net, etag-quoter, quotas, object versioning) and the suite's tempauth
users (test:tester and test2:tester2 admins of their accounts, test:tester3 not); its devices
are on /dev/shm, a tmpfs: on ext4, 90 metadata items make Swift itself answer 503. Through the
gateway, test:tester and test:tester3 reach account `test` and test2:tester2 account `test2`,
each a `swift-v1` account with the owner's credentials.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swift_upstream  # noqa: E402

GATEWAY = os.environ.get("SWIFTGATE_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "swiftgate")
SDIST_DIR = os.environ.get("SWIFT_SDIST_DIR") or os.path.expanduser("~/.cache/swiftgate")
MODULES = ("tests", "test_account", "test_container", "test_object", "test_access_control", "test_dlo", "test_slo",
           "test_staticweb", "test_symlink", "test_tempurl", "test_versioned_writes", "test_object_versioning",
           "test_domain_remap")
# The longest module takes about 70 s here; a module that hangs is cut off.
MODULE_TIMEOUT = 300
STORAGE_DOMAIN = "example.net"


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
                          "tempurl", "ratelimit", "copy", "dlo", "symlink", "staticweb", "container_quotas",
                          "account_quotas", "crossdomain", "formpost")
            )
            pipeline = ("catch_errors gatekeeper healthcheck proxy_logging cache etag_quoter domain_remap "
                        "listing_formats bulk tempurl ratelimit crossdomain formpost tempauth staticweb copy "
                        "container_quotas account_quotas slo dlo versioned_writes symlink proxy_logging proxy-server")
            extra = (
                "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\nallow_account_management = true\n"
                "[filter:tempauth]\nuse = egg:swift#tempauth\n"
                "user_admin_admin = admin .admin .reseller_admin\n"
                "user_test_tester = testing .admin\nuser_test2_tester2 = testing2 .admin\n"
                "user_test_tester3 = testing3\nuser_test5_tester5 = testing5 service\n"
                f"token_life = {self.token_life}\n"
                "[filter:versioned_writes]\nuse = egg:swift#versioned_writes\nallow_versioned_writes = true\n"
                "allow_object_versioning = true\n"
                "[filter:slo]\nuse = egg:swift#slo\nallow_async_delete = true\n"
                "[filter:etag_quoter]\nuse = egg:swift#etag_quoter\nenable_by_default = false\n"
                f"[filter:domain_remap]\nuse = egg:swift#domain_remap\nstorage_domain = {STORAGE_DOMAIN}\n"
                f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{self.ports['memcached']}\n"
                + filters
            )
            return orig(name, port, pipeline, extra)

        self._conf = conf
        super().start()
        # The suite expects its accounts to exist (a HEAD on an autocreated one answers 200,
        # not 204, and test_tempurl's setup fails on it), as in a cluster it has run on.
        for user, key in (("test:tester", "testing"), ("test2:tester2", "testing2")):
            auth = urllib.request.Request(self.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key})
            with urllib.request.urlopen(auth, timeout=10) as r:
                url, token = r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]
            with urllib.request.urlopen(urllib.request.Request(url, method="POST", headers={"X-Auth-Token": token}),
                                        timeout=10):
                pass


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


def load_expected(path):
    """{test id: reason key} from the expected-failures file; `= key: text` lines define keys."""
    reasons, expected = {}, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("="):
                key, _, text = line[1:].partition(":")
                reasons[key.strip()] = text.strip()
                continue
            test, _, reason = line.partition(" ")
            reason = reason.strip()
            if reason not in reasons:
                sys.exit(f"{path}:{n}: {test} names no defined reason ({reason!r})")
            if test in expected:
                sys.exit(f"{path}:{n}: {test} is listed twice")
            expected[test] = reason
    return expected


def outcomes(junit):
    """{test id: passed|failed|skipped} from a JUnit report; a setup or teardown error fails."""
    got = {}
    for case in ET.parse(junit).iter("testcase"):
        module, _, klass = case.get("classname").rpartition(".")
        test = f"{module.rsplit('.', 1)[-1]}.py::{klass}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            got[test] = "failed"
        elif case.find("skipped") is not None:
            got.setdefault(test, "skipped")
        else:
            got.setdefault(test, "passed")
    return got


def run_module(tree, module, direct, out):
    """Runs one module against a fresh Swift (and gateway); its outcomes, or None if pytest did
    not run to the end."""
    os.makedirs(out, exist_ok=True)
    base = tempfile.mkdtemp(prefix="func-", dir="/dev/shm")
    swift = SaioSwift(base, token_life=86400, max_file_size=5 * 1024 * 1024 * 1024 + 2, listing_limit=10000)
    gw = None
    try:
        swift.start()
        auth = swift.auth_url
        if not direct:
            port = swift_upstream.free_port()
            os.makedirs(os.path.join(base, "state"))
            conf = gateway_config(base, swift, port)
            gw = subprocess.Popen([GATEWAY, "serve", "--config", conf], stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(out, "gateway.log"), "w"))
            if not gw.stdout.readline():  # the public URL, printed once it serves
                raise RuntimeError(f"the gateway did not start; see {out}/gateway.log")
            auth = f"http://127.0.0.1:{port}/auth/v1.0"
        host, port = auth.split("/")[2].split(":")
        test_conf = os.path.join(base, "test.conf")
        with open(test_conf, "w") as f:
            f.write(f"""[func_test]
auth_uri = {auth}
auth_host = {host}
auth_port = {port}
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
storage_domain = {STORAGE_DOMAIN}
collate = C
""")
        env = dict(os.environ, SWIFT_TEST_CONFIG_FILE=test_conf, PYTHONPATH=tree)
        junit = os.path.join(out, "junit.xml")
        with open(os.path.join(out, "pytest.log"), "w") as log:
            result = subprocess.run(
                ["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={junit}",
                 f"test/functional/{module}.py"],
                cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=MODULE_TIMEOUT,
            )
        # pytest: 0 all passed, 1 some failed; anything else did not run the module through.
        if result.returncode not in (0, 1) or not os.path.exists(junit):
            return None
        return outcomes(junit)
    except Exception as e:  # a stack that did not come up, a module cut off by the timeout
        print(f"{module}: {e!r}", flush=True)
        return None
    finally:
        if gw:
            gw.terminate()
            gw.wait()
        swift.stop()
        shutil.rmtree(base, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--direct", action="store_true", help="against Swift itself, not through the gateway")
    ap.add_argument("--out", help="where each module's logs go (default: a new temporary directory)")
    ap.add_argument("--expected", default=os.path.join(HERE, "functional_expected.txt"))
    ap.add_argument("modules", nargs="*", help=f"modules to run (default: all of {', '.join(MODULES)})")
    args = ap.parse_args()
    modules = args.modules or MODULES
    out = args.out or tempfile.mkdtemp(prefix="swiftgate-functional-")
    expected = {} if args.direct else load_expected(args.expected)
    tree = sdist()
    mode = "direct" if args.direct else "gateway"
    started = time.monotonic()
    counts = {"passed": 0, "failed": 0, "expected-failed": 0, "skipped": 0}
    problems, seen = [], set()
    for module in modules:
        t = time.monotonic()
        got = run_module(tree, module, args.direct, os.path.join(out, module))
        if got is None:
            problems.append(f"{module}: pytest did not run to the end; see {out}/{module}/pytest.log")
            print(f"{mode} {module}: did not complete in {time.monotonic() - t:.0f}s", flush=True)
            continue
        line = {"passed": 0, "failed": 0, "expected-failed": 0, "skipped": 0}
        for test, outcome in sorted(got.items()):
            seen.add(test)
            if outcome == "failed" and test in expected:
                outcome = "expected-failed"
            elif outcome == "failed":
                problems.append(f"unexpected failure: {test} (see {out}/{module}/pytest.log)")
            elif test in expected:
                problems.append(f"listed as failing ({expected[test]}) but {outcome}: {test}")
            line[outcome] += 1
        for k, v in line.items():
            counts[k] += v
        print(f"{mode} {module}: " + ", ".join(f"{v} {k}" for k, v in line.items())
              + f" in {time.monotonic() - t:.0f}s", flush=True)
    ran = {f"{m}.py" for m in modules}
    for test in sorted(expected):
        if test.split("::")[0] in ran and test not in seen:
            problems.append(f"listed but not run: {test}")
    for p in problems:
        print(p)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"functional suite {mode}: {summary} in {time.monotonic() - started:.0f}s; logs in {out}")
    with open(os.path.join(out, "counts.json"), "w") as f:
        json.dump(dict(counts, problems=problems), f, indent=1)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
