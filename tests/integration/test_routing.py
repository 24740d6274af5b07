"""Routing: exact host, wildcard host, longest path prefix, unknown host → 404."""
import unittest

from harness import ProxyCase, basic_config, request, route


class RoutingTest(ProxyCase):
    nbackends = 5

    @classmethod
    def config(cls):
        b1, b2, b3, b4, b5 = cls.backends
        return basic_config([
            route("exact", [b1], host="a.test"),
            route("wild", [b2], host="*.wild.test"),
            route("api", [b3], host="a.test", path_prefix="/api"),
            route("apiv2", [b4], host="a.test", path_prefix="/api/v2"),
            route("exactwild", [b5], host="exact.wild.test"),
        ])

    def served_by(self, host, path="/"):
        r = request(self.gh.port, "GET", path, host=host)
        self.assertEqual(r.status, 200, f"{host}{path}: {r}")
        return r.header("x-backend")

    def test_exact_host(self):
        self.assertEqual(self.served_by("a.test"), "b1")
        self.assertEqual(self.served_by("a.test", "/other/page"), "b1")

    def test_host_case_and_port_ignored(self):
        self.assertEqual(self.served_by("A.Test"), "b1")
        self.assertEqual(self.served_by("a.test:8080"), "b1")

    def test_wildcard_host(self):
        self.assertEqual(self.served_by("foo.wild.test"), "b2")
        self.assertEqual(self.served_by("FOO.wild.test:81", "/x"), "b2")

    def test_wildcard_does_not_match_bare_domain(self):
        r = request(self.gh.port, "GET", "/", host="wild.test")
        self.assertEqual(r.status, 404)

    def test_exact_beats_wildcard(self):
        self.assertEqual(self.served_by("exact.wild.test"), "b5")

    def test_longest_prefix(self):
        self.assertEqual(self.served_by("a.test", "/api"), "b3")
        self.assertEqual(self.served_by("a.test", "/api/users"), "b3")
        self.assertEqual(self.served_by("a.test", "/api/v2"), "b4")
        self.assertEqual(self.served_by("a.test", "/api/v2/items?x=/api"), "b4")
        self.assertEqual(self.served_by("a.test", "/ap"), "b1")

    def test_unknown_host_404_page(self):
        before = sum(b.hits() for b in self.backends)
        r = request(self.gh.port, "GET", "/", host="nobody.test",
                    headers=[("Accept", "text/html")])
        self.assertEqual(r.status, 404)
        self.assertGreater(len(r.body), 0)
        self.assertIn("text/html", r.header("content-type", ""))
        r = request(self.gh.port, "GET", "/", host="nobody.test",
                    headers=[("Accept", "application/json")])
        self.assertEqual(r.status, 404)
        self.assertEqual(sum(b.hits() for b in self.backends), before)

    def test_reserved_path_not_forwarded(self):
        before = self.backends[0].hits()
        r = request(self.gh.port, "GET", "/.gatehouse/nothing-here", host="a.test")
        self.assertEqual(r.status, 404)
        self.assertEqual(self.backends[0].hits(), before)


class CatchAllRouteTest(ProxyCase):
    """A route without a host matches any host, after the host-specific ones."""
    nbackends = 2

    @classmethod
    def config(cls):
        b1, b2 = cls.backends
        return basic_config([route("any", [b1]), route("named", [b2], host="named.test")])

    def test_named_host_wins(self):
        self.assertEqual(request(self.gh.port, "GET", "/", host="named.test").header("x-backend"),
                         "b2")

    def test_other_hosts_fall_back(self):
        self.assertEqual(request(self.gh.port, "GET", "/", host="else.test").header("x-backend"),
                         "b1")


if __name__ == "__main__":
    unittest.main()
