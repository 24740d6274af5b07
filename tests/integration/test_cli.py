"""CLI contract: --version, --help, usage errors exit 2, a bad config exits 1."""
import os
import subprocess
import tempfile
import unittest

from harness import gatehouse_bin


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
