"""What `make run|test|bench` install (scripts/deps.sh profiles) and what the
README says the binary links. GATEHOUSE_SRC points at another source tree."""
import os
import re
import subprocess
import unittest

from harness import ROOT

SRC = os.environ.get("GATEHOUSE_SRC", ROOT)
BENCH_ONLY = {"wrk", "haproxy", "apache2", "nginx-light", "libapache2-mod-auth-openidc"}
TEST_ONLY = {"libcmocka-dev", "chromium", "clang"}


def profile(name):
    r = subprocess.run(["bash", os.path.join(SRC, "scripts", "deps.sh"), "--print", name],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("deps.sh --print %s: exit %d %s" % (name, r.returncode, r.stderr))
    pkgs = set(r.stdout.split())
    if "build-essential" not in pkgs:
        raise AssertionError("deps.sh --print %s lists no build packages" % name)
    return pkgs


class ProfilesTest(unittest.TestCase):
    def test_run_installs_only_what_the_demo_needs(self):
        run = profile("run")
        self.assertIn("libcjose-dev", run)
        self.assertIn("nodejs", run)  # the demo IdP
        self.assertFalse(run & BENCH_ONLY, run & BENCH_ONLY)
        self.assertFalse(run & TEST_ONLY, run & TEST_ONLY)

    def test_test_adds_test_tools_not_bench_peers(self):
        t = profile("test")
        self.assertTrue(TEST_ONLY <= t)
        self.assertTrue(profile("run") <= t)
        self.assertFalse(t & BENCH_ONLY)

    def test_bench_adds_the_peers(self):
        self.assertTrue(BENCH_ONLY <= profile("bench"))

    def test_nothing_installs_unlinked_libraries(self):
        meson = open(os.path.join(SRC, "meson.build")).read()
        for lib, pkg in (("oauth2", "liboauth2-dev"), ("lasso", "liblasso3-dev")):
            if lib not in meson:
                for p in ("build", "run", "test", "bench"):
                    self.assertNotIn(pkg, profile(p), p)

    def test_unknown_profile_is_usage_error(self):
        r = subprocess.run(["bash", os.path.join(SRC, "scripts", "deps.sh"), "--print", "x"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)

    def test_makefile_passes_the_profile(self):
        for target in ("run", "test", "bench"):
            r = subprocess.run(["make", "-n", "-C", SRC, target], capture_output=True,
                               text=True, timeout=30)
            self.assertIn("scripts/deps.sh %s" % target, r.stdout)


class ReadmeLibrariesTest(unittest.TestCase):
    def test_readme_names_what_is_linked_and_nothing_else(self):
        readme = open(os.path.join(SRC, "README.md")).read()
        meson = open(os.path.join(SRC, "meson.build")).read()
        deps = set(re.findall(r"dependency\('([^']+)'", meson))
        names = {"openssl": "OpenSSL", "cjose": "cjose", "jansson": "jansson",
                 "libcurl": "libcurl", "sqlite3": "SQLite", "yaml-0.1": "libyaml",
                 "libev": "libev", "cmocka": "cmocka", "libpcre2-8": "PCRE2",
                 "lasso": "lasso", "glib-2.0": "GLib", "gobject-2.0": "GObject",
                 "libxml-2.0": "libxml2",
                 "threads": None}
        for d in deps:
            self.assertIn(d, names, "new dependency %s: say in README why it is linked" % d)
            if names[d]:
                self.assertIn(names[d], readme)
        self.assertNotRegex(readme, r"[Ii]t links liboauth2")
        self.assertIn("does not link liboauth2", readme)
        self.assertNotIn("SAML sign-in, or", readme)

    def test_docs_say_why_not_liboauth2(self):
        doc = open(os.path.join(SRC, "docs", "authentication.md")).read()
        m = re.search(r"## Why not liboauth2\n(.*?)\n## ", doc, re.S)
        self.assertIsNotNone(m)
        for word in ("1.4.5", "`aud`", "`exp`", "blocking"):
            self.assertIn(word, m.group(1))
