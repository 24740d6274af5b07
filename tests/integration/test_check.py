"""`gatehouse check -c FILE`: every tests/data/bad-conf/*.yaml exits 1 with exactly
the messages its "# expect:" lines give (in order); every tests/data/good-conf/*.yaml
exits 0 with "FILE: ok"; wrong arguments print the usage and exit 2."""
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import unittest

from harness import ROOT, gatehouse_bin

DATA = os.path.join(ROOT, "tests", "data")
BAD = os.path.join(DATA, "bad-conf")
GOOD = os.path.join(DATA, "good-conf")


def run_check(args, cwd=None):
    return subprocess.run([gatehouse_bin(), "check"] + args, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def expected_messages(path):
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith("# expect: "):
                out.append(line[len("# expect: "):].rstrip("\n"))
    return out


class BadConfigTest(unittest.TestCase):
    def test_bad_configs_exist(self):
        self.assertGreaterEqual(len(glob.glob(os.path.join(BAD, "*.yaml"))), 20)

    def test_each_bad_config_fails_with_its_exact_messages(self):
        for path in sorted(glob.glob(os.path.join(BAD, "*.yaml"))):
            name = os.path.basename(path)
            with self.subTest(config=name):
                want = expected_messages(path)
                self.assertTrue(want, f"{name} has no '# expect:' line")
                # Relative name, from the file's directory: messages start with it.
                r = run_check(["-c", name], cwd=BAD)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertEqual(r.stderr.splitlines(), want)
                self.assertNotIn(": ok", r.stdout)

    def test_messages_name_the_file_as_given(self):
        path = os.path.join(BAD, "duplicate-route-name.yaml")
        r = run_check(["-c", path])
        self.assertEqual(r.returncode, 1)
        want = [os.path.join(BAD, m) for m in expected_messages(path)]
        self.assertEqual(r.stderr.splitlines(), want)

    def test_missing_file(self):
        r = run_check(["-c", "no-such-config.yaml"], cwd=BAD)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.strip(),
                         "no-such-config.yaml: error: cannot open: No such file or directory")

    def test_more_than_20_errors_are_counted(self):
        d = tempfile.mkdtemp(prefix="gh-check-")
        try:
            routes = "".join(f"  - {{name: r{i}, match: {{path_prefix: /{i}}}}}\n"
                             for i in range(23))
            with open(os.path.join(d, "g.yaml"), "w") as f:
                f.write("listen: [{address: 127.0.0.1:8080}]\nroutes:\n" + routes)
            r = run_check(["-c", "g.yaml"], cwd=d)
            self.assertEqual(r.returncode, 1)
            lines = r.stderr.splitlines()
            self.assertEqual(len(lines), 21)
            self.assertEqual(lines[0], 'g.yaml:3:5: error: route "r0" has no upstream servers')
            self.assertEqual(lines[-1], "... and 3 more errors")
        finally:
            shutil.rmtree(d)


class GoodConfigTest(unittest.TestCase):
    def test_each_good_config_is_ok(self):
        paths = sorted(glob.glob(os.path.join(GOOD, "*.yaml")))
        self.assertGreaterEqual(len(paths), 2)
        for path in paths:
            name = os.path.basename(path)
            with self.subTest(config=name):
                r = run_check(["-c", name], cwd=GOOD)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, f"{name}: ok\n")
                self.assertEqual(r.stderr, "")

    def test_long_option_forms(self):
        path = os.path.join(GOOD, "minimal.yaml")
        for args in (["--config", path], [f"--config={path}"]):
            with self.subTest(args=args):
                r = run_check(args)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, f"{path}: ok\n")

    def test_check_binds_nothing_and_creates_nothing(self):
        d = tempfile.mkdtemp(prefix="gh-check-")
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            # The listen port is taken: check must still succeed (it never binds),
            # and it must not create the access log or the state database.
            with open(os.path.join(d, "g.yaml"), "w") as f:
                f.write(f"listen: [{{address: 127.0.0.1:{port}}}]\n"
                        "access_log: access.log\nstate: {sqlite: state.db}\n"
                        "routes:\n  - {name: a, public: true, upstream: {servers: [http://127.0.0.1:1]}}\n")
            r = run_check(["-c", "g.yaml"], cwd=d)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(sorted(os.listdir(d)), ["g.yaml"])
        finally:
            s.close()
            shutil.rmtree(d)


class ScaleTest(unittest.TestCase):
    """Issue 9.15: loading was quadratic in the number of routes (a linear policy
    lookup per route: 10k routes 0.31 s, 40k 10 s)."""

    @staticmethod
    def write_routes(d, n):
        path = os.path.join(d, f"r{n}.yaml")
        with open(path, "w") as f:
            f.write("listen: [{address: 127.0.0.1:8080}]\nroutes:\n")
            for i in range(n):
                f.write(f"  - {{name: r{i}, match: {{host: h{i}.example.com}}, public: true, "
                        f"upstream: {{servers: [http://127.0.0.1:9001]}}}}\n")
        return path

    def best_time(self, path, runs=2):
        import time
        best = None
        for _ in range(runs):
            t = time.monotonic()
            r = run_check(["-c", path])
            took = time.monotonic() - t
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            best = took if best is None else min(best, took)
        return best

    def test_issue_9_15_check_time_grows_linearly_with_routes(self):
        d = tempfile.mkdtemp(prefix="gh-scale-")
        try:
            small = self.best_time(self.write_routes(d, 10000))
            large = self.best_time(self.write_routes(d, 40000))
            # Four times the routes: linear is about 4x; quadratic was about 25x.
            # A loose bound so a busy machine does not fail it.
            self.assertLess(large, 8 * small + 0.5,
                            f"10k routes {small:.2f}s, 40k routes {large:.2f}s")
        finally:
            shutil.rmtree(d)


class DocsTest(unittest.TestCase):
    def test_every_config_key_is_documented(self):
        """Each key the loader accepts (its key tables in src/proxy/config.c) and each
        enumerated value appears, in backquotes, in docs/configuration.md."""
        with open(os.path.join(ROOT, "src", "proxy", "config.c")) as f:
            src = f.read()
        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            doc = f.read()
        tables = re.findall(r"static const char \*const (\w+)\[\] = \{(.*?)\};", src, re.S)
        self.assertGreaterEqual(len(tables), 10)
        names = set()
        for _, body in tables:
            names.update(re.findall(r'"([a-z_]+)"', body))
        self.assertIn("upstream_response", names)
        missing = sorted(n for n in names
                         if not re.search(r"`([a-z_]+\.)*" + n + r"(`|\.|:)", doc))
        self.assertEqual(missing, [])


    def test_complete_example_has_only_missing_file_errors(self):
        """The "complete example" of docs/configuration.md is valid apart from the
        files it names, which do not exist here."""
        with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
            doc = f.read()
        m = re.search(r"## A complete example\n\n```yaml\n(.*?)```", doc, re.S)
        self.assertIsNotNone(m)
        d = tempfile.mkdtemp(prefix="gh-check-")
        try:
            with open(os.path.join(d, "g.yaml"), "w") as f:
                f.write(m.group(1))
            r = run_check(["-c", "g.yaml"], cwd=d)
            self.assertEqual(r.returncode, 1)
            lines = r.stderr.splitlines()
            self.assertGreater(len(lines), 0)
            for line in lines:
                self.assertRegex(line, r"^g\.yaml:\d+:\d+: error: cannot (read|write) .*"
                                       r"No such file or directory$")
        finally:
            shutil.rmtree(d)


class UsageTest(unittest.TestCase):
    def assert_usage_error(self, args, first_line):
        r = run_check(args, cwd=GOOD)
        self.assertEqual(r.returncode, 2, r)
        lines = r.stderr.splitlines()
        self.assertEqual(lines[0], first_line)
        self.assertIn("usage: gatehouse check -c FILE", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_no_arguments(self):
        self.assert_usage_error([], "gatehouse check: missing -c FILE")

    def test_option_without_value(self):
        self.assert_usage_error(["-c"], "gatehouse check: option -c needs a FILE")

    def test_unknown_option(self):
        self.assert_usage_error(["-c", "minimal.yaml", "--strict"],
                                'gatehouse check: unexpected argument "--strict"')

    def test_stray_argument(self):
        self.assert_usage_error(["minimal.yaml"],
                                'gatehouse check: unexpected argument "minimal.yaml"')

    def test_two_files(self):
        self.assert_usage_error(["-c", "minimal.yaml", "-c", "full.yaml"],
                                "gatehouse check: only one -c FILE is allowed")

    def test_help(self):
        r = run_check(["--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: gatehouse check -c FILE", r.stdout)


if __name__ == "__main__":
    unittest.main()
