"""CLI contract: --version, --help, usage errors exit 2, a bad config exits 1."""
import os
import subprocess
import tempfile
import unittest

from harness import SIGNIN_CONFIG_HEAD, gatehouse_bin


def run(*args, timeout=10):
    return subprocess.run([gatehouse_bin(), *args], capture_output=True, timeout=timeout)


class CliTest(unittest.TestCase):
    def test_version(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.decode(), r"^gatehouse \S+\n$")

    def test_help(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        out = r.stdout.decode()
        self.assertIn("usage:", out)
        self.assertIn("serve", out)
        self.assertIn("check", out)

    def test_no_arguments_is_usage_error(self):
        r = run()
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage:", r.stderr.decode())

    def test_unknown_command_is_usage_error(self):
        r = run("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr.decode())

    def test_serve_without_config_is_usage_error(self):
        r = run("serve")
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr.decode())

    def test_serve_unknown_option_is_usage_error(self):
        r = run("serve", "--bogus-option")
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr.decode())

    def test_serve_missing_file_exits_1(self):
        r = run("serve", "-c", "/nonexistent/gatehouse.yaml")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/gatehouse.yaml", r.stderr.decode())

    def test_serve_invalid_config_exits_1_with_position(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "gatehouse.yaml")
            with open(p, "w") as f:
                f.write("listen:\n  - address: 127.0.0.1:1\nworkerz: 1\nroutes: []\n")
            r = run("serve", "-c", p)
            self.assertEqual(r.returncode, 1)
            err = r.stderr.decode()
            self.assertIn(f"{p}:3:1: error:", err)
            self.assertIn('did you mean "workers"', err)


if __name__ == "__main__":
    unittest.main()


# Every command and subcommand: `--help` prints its usage on stdout, exit 0.
HELP_TABLE = [
    ("serve",), ("check",), ("policy",), ("policy", "test"), ("policy", "explain"),
    ("policy", "diff"), ("audit",), ("audit", "query"), ("audit", "verify"),
    ("audit", "retain"), ("sessions",), ("sessions", "list"), ("sessions", "revoke"),
    ("devices",), ("devices", "enroll"), ("devices", "list"), ("devices", "show"),
    ("devices", "revoke"),
]

# Commands that need a configuration: without -c, exit 2 and say that -c is missing.
NEEDS_C = [
    ("serve",), ("serve", "--log-level", "debug"), ("policy", "diff", "--new", "x"),
    ("policy", "explain", "--route", "r", "--input", "i.json"),
    ("audit", "query", "--user", "u"), ("audit", "verify"), ("audit", "retain"),
    ("sessions", "list"), ("sessions", "revoke", "--id", "abcdef01"), ("check",),
    ("devices", "list"), ("devices", "revoke", "0123456789abcdef"),
    ("devices", "enroll", "--cert", "d.pem", "--owner", "a@example.com"),
]


class HelpEverywhereTest(unittest.TestCase):
    def test_every_command_answers_help(self):
        for cmd in HELP_TABLE:
            for flag in ("--help", "-h"):
                with self.subTest(cmd=cmd, flag=flag):
                    r = run(*cmd, flag)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    out = r.stdout.decode()
                    self.assertTrue(out.startswith("usage: gatehouse " + cmd[0]), out)
                    self.assertIn(" ".join(cmd), out)
                    self.assertIn("exit status", out)
                    self.assertEqual(r.stderr, b"")

    def test_help_after_other_options(self):
        r = run("audit", "query", "-c", "/nonexistent.yaml", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--until", r.stdout.decode())

    def test_policy_test_help_is_not_a_file(self):
        r = run("policy", "test", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertNotIn("not found", r.stdout.decode())

    def test_missing_config_names_c(self):
        for cmd in NEEDS_C:
            with self.subTest(cmd=cmd):
                r = run(*cmd)
                self.assertEqual(r.returncode, 2, r.stderr)
                err = r.stderr.decode()
                self.assertIn("missing -c", err.splitlines()[0])
                self.assertIn("usage:", err)

    def test_explain_with_policy_needs_no_config(self):
        r = run("policy", "explain", "--policy", "/nonexistent/p.yaml", "--input", "x.json")
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("missing -c", r.stderr.decode())

    def test_top_level_help_lists_everything(self):
        out = run("--help").stdout.decode()
        for word in ("serve", "check", "--dump", "policy  test", "policy  explain",
                     "--request-id", "policy  diff", "audit   query", "--until", "--limit",
                     "audit   verify", "audit   retain", "sessions list", "sessions revoke",
                     "devices enroll", "devices list", "devices show", "devices revoke",
                     "--log-level", "--version", "--help", "-c, --config"):
            self.assertIn(word, out)
        self.assertRegex(out, r"exit status: 0 ok, 1 failure.*\n.*2 usage")


class PolicyTestDirTest(unittest.TestCase):
    def test_dir_skips_files_that_are_not_policies(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "gatehouse.yaml"), "w") as f:
                f.write("listen:\n  - address: 127.0.0.1:1\nroutes: []\n")
            with open(os.path.join(d, "wiki.yaml"), "w") as f:
                f.write("rules:\n  - {id: all, effect: allow, when: {authenticated: true}}\n")
            with open(os.path.join(d, "wiki.test.yaml"), "w") as f:
                f.write("cases:\n  - {name: anon, input: {}, expect: login}\n")
            with open(os.path.join(d, "orphan.yaml"), "w") as f:
                f.write("rules:\n  - {id: x, effect: allow, when: {authenticated: true}}\n")
            r = run("policy", "test", d)
            out = r.stdout.decode()
            self.assertEqual(r.returncode, 0, out)
            self.assertNotIn("gatehouse.yaml", out)
            self.assertIn("orphan.yaml: note: no test file", out)
            self.assertIn("policy: 1 passed, 0 failed", out)


class PolicyTestPathFormTest(unittest.TestCase):
    """A policy test case's path is the path the live proxy feeds the policy:
    normalised (escapes of unreserved characters decoded, dot segments removed,
    slashes merged), and one the proxy refuses with 400 is an error of the case."""

    POLICY = ("rules:\n"
              "  - {id: no-admin, effect: deny, when: {path: {prefix: /admin}}}\n"
              "  - {id: rest, effect: allow, when: {authenticated: true}}\n")

    def policy_test(self, cases):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "app.yaml"), "w") as f:
                f.write(self.POLICY)
            path = os.path.join(d, "app.test.yaml")
            with open(path, "w") as f:
                f.write("cases:\n" + cases)
            r = run("policy", "test", path)
            return r.returncode, r.stdout.decode() + r.stderr.decode(), path

    def test_ambiguous_paths_are_denied_as_live(self):
        cases = "".join(
            "  - {name: %s, input: {user: alice, path: '%s'}, expect: deny, rule: no-admin}\n"
            % (n, p) for n, p in (("escaped", "/%61dmin"), ("dotdot", "/x/../admin"),
                                  ("slashes", "//admin"), ("dot", "/./admin/x"),
                                  ("query", "/admin?x=1")))
        cases += "  - {name: docs, input: {user: alice, path: '/docs/%7Eme'}, expect: allow}\n"
        rc, out, _ = self.policy_test(cases)
        self.assertEqual(rc, 0, out)
        self.assertIn("6 passed, 0 failed", out)

    def test_refused_path_is_an_error_not_a_decision(self):
        for p in ("/%2Fadmin", "/../admin", "/a%5Cb", "/a%00", "/..;x/admin"):
            with self.subTest(path=p):
                # "expect: allow" would pass if the raw path were evaluated.
                rc, out, path = self.policy_test(
                    "  - {name: refused, input: {user: alice,\n"
                    "      path: '%s'}, expect: allow}\n" % p)
                self.assertEqual(rc, 1, out)
                self.assertIn("FAIL refused", out)
                self.assertIn("proxy refuses", out)
                self.assertIn(p, out)
                self.assertIn("%s:3:13" % path, out)
                self.assertIn("0 passed, 1 failed", out)

    def test_host_is_compared_as_live(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "app.yaml"), "w") as f:
                f.write("rules:\n  - {id: h, effect: allow, when: {host: wiki.example.com}}\n"
                        "  - {id: v6, effect: allow, when: {host: '[::1]'}}\n")
            with open(os.path.join(d, "app.test.yaml"), "w") as f:
                f.write("cases:\n"
                        "  - {name: h, input: {host: 'Wiki.Example.COM.:8443'}, expect: allow}\n"
                        "  - {name: v6, input: {host: '[::1]:8443'}, expect: allow, rule: v6}\n")
            r = run("policy", "test", os.path.join(d, "app.test.yaml"))
            out = r.stdout.decode() + r.stderr.decode()
            self.assertEqual(r.returncode, 0, out)
            self.assertIn("2 passed, 0 failed", out)

    def test_explain_input_path_is_normalised(self):
        with tempfile.TemporaryDirectory() as d:
            pol = os.path.join(d, "app.yaml")
            with open(pol, "w") as f:
                f.write(self.POLICY)
            req = os.path.join(d, "req.json")
            with open(req, "w") as f:
                f.write('{"user": "alice", "path": "/x/../%61dmin"}')
            r = run("policy", "explain", "--policy", pol, "--input", req)
            out = r.stdout.decode() + r.stderr.decode()
            self.assertIn("no-admin", out)
            self.assertRegex(out, r"(?i)deny")
            with open(req, "w") as f:
                f.write('{"user": "alice", "path": "/%2Fadmin"}')
            r = run("policy", "explain", "--policy", pol, "--input", req)
            out = r.stdout.decode() + r.stderr.decode()
            self.assertNotEqual(r.returncode, 0, out)
            self.assertIn("proxy refuses", out)

    def test_explain_route_options_apply(self):
        # explain -c --route knows the route: a case-insensitive route folds
        # /ADMIN to /admin (denied), a route with encoded_slashes: pass keeps
        # %2F; the same input is evaluated as given on a plain route.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "app.yaml"), "w") as f:
                f.write(self.POLICY)
            cfg = os.path.join(d, "gatehouse.yaml")
            with open(cfg, "w") as f:
                f.write(SIGNIN_CONFIG_HEAD +
                        "routes:\n"
                        "  - {name: ci, match: {host: a.example.com, path_case_insensitive: true},\n"
                        "     policy: app.yaml, upstream: {servers: [\"http://127.0.0.1:9\"]}}\n"
                        "  - {name: plain, match: {host: b.example.com}, policy: app.yaml,\n"
                        "     encoded_slashes: pass, upstream: {servers: [\"http://127.0.0.1:9\"]}}\n")
            req = os.path.join(d, "req.json")
            with open(req, "w") as f:
                f.write('{"user": "alice", "path": "/%41DMIN/x"}')
            r = run("policy", "explain", "-c", cfg, "--route", "ci", "--input", req)
            self.assertIn('decision: deny by rule "no-admin"', r.stdout.decode(), r.stderr)
            r = run("policy", "explain", "-c", cfg, "--route", "plain", "--input", req)
            self.assertIn('decision: allow by rule "rest"', r.stdout.decode(), r.stderr)
            with open(req, "w") as f:
                f.write('{"user": "alice", "path": "/a%2fb"}')
            r = run("policy", "explain", "-c", cfg, "--route", "plain", "--input", req)
            self.assertIn('decision: allow by rule "rest"', r.stdout.decode(), r.stderr)
            r = run("policy", "explain", "-c", cfg, "--route", "ci", "--input", req)
            self.assertIn("proxy refuses", r.stderr.decode())


class ExplainLoadsWhatServeLoadsTest(unittest.TestCase):
    """Issue 11: `policy explain -c` and `policy diff -c` take the configuration
    from the loader serve and check use. A configuration serve refuses is refused
    with the same messages `check` prints, not explained with a guess (a route
    whose flag does not parse was any-signed-in to explain before)."""

    CFG = (SIGNIN_CONFIG_HEAD +
           "routes:\n"
           "  - {name: app, public: maybe, upstream: {servers: [\"http://127.0.0.1:9\"]}}\n")

    def test_explain_and_diff_refuse_what_check_refuses(self):
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "gatehouse.yaml")
            with open(cfg, "w") as f:
                f.write(self.CFG)
            req = os.path.join(d, "req.json")
            with open(req, "w") as f:
                f.write('{"user": "alice", "path": "/x"}')
            os.mkdir(os.path.join(d, "new"))
            check = run("check", "-c", cfg)
            self.assertEqual(check.returncode, 1)
            want = cfg + ':7:25: error: "public" must be true or false, got "maybe"\n'
            self.assertEqual(check.stderr.decode(), want)
            r = run("policy", "explain", "-c", cfg, "--route", "app", "--input", req)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertEqual(r.stdout.decode(), "")
            self.assertEqual(r.stderr.decode(), want)
            r = run("policy", "diff", "-c", cfg, "--new", os.path.join(d, "new"))
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertEqual(r.stderr.decode(), want)
