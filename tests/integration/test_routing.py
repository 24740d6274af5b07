"""Routing: exact host, wildcard host, longest path prefix, unknown host → 404."""
import unittest

from harness import ProxyCase, basic_config, request, route


class RoutingTest(ProxyCase):
    nbackends = 6

    @classmethod
    def config(cls):
        b1, b2, b3, b4, b5, b6 = cls.backends
        return basic_config([
            route("exact", [b1], host="a.test"),
            route("wild", [b2], host="*.wild.test"),
            route("api", [b3], host="a.test", path_prefix="/api"),
            route("apiv2", [b4], host="a.test", path_prefix="/api/v2"),
            route("exactwild", [b5], host="exact.wild.test"),
            route("deepwild", [b6], host="*.deep.wild.test"),
            route("onlyapi", [b3], host="only.test", path_prefix="/api"),
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

    def test_wildcard_any_depth_longest_suffix_first(self):
        self.assertEqual(self.served_by("a.b.wild.test"), "b2")
        self.assertEqual(self.served_by("x.deep.wild.test"), "b6")
        self.assertEqual(self.served_by("y.x.deep.wild.test"), "b6")

    def test_trailing_dot_host(self):
        self.assertEqual(self.served_by("a.test."), "b1")

    def test_prefix_matches_on_segment_boundary(self):
        self.assertEqual(self.served_by("a.test", "/apix"), "b1")
        self.assertEqual(self.served_by("a.test", "/api/v2x"), "b3")
        self.assertEqual(self.served_by("a.test", "/api?x=1"), "b3")

    def test_host_without_matching_prefix_is_404(self):
        self.assertEqual(self.served_by("only.test", "/api/x"), "b3")
        self.assertEqual(request(self.gh.port, "GET", "/other", host="only.test").status, 404)

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
        return basic_config([route("any", [b1]), route("named", [b2], host="named.test"),
                             route("namedapi", [b2], host="api.named.test", path_prefix="/api")])

    def test_named_host_wins(self):
        self.assertEqual(request(self.gh.port, "GET", "/", host="named.test").header("x-backend"),
                         "b2")

    def test_host_group_without_matching_prefix_falls_through(self):
        self.assertEqual(request(self.gh.port, "GET", "/api/x", host="api.named.test")
                         .header("x-backend"), "b2")
        self.assertEqual(request(self.gh.port, "GET", "/other", host="api.named.test")
                         .header("x-backend"), "b1")

    def test_other_hosts_fall_back(self):
        self.assertEqual(request(self.gh.port, "GET", "/", host="else.test").header("x-backend"),
                         "b1")


if __name__ == "__main__":
    unittest.main()
