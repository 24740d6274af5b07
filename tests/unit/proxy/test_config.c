/* Unit tests for proxy/config.c: defaults, every key, every message (exact
 * text and position), several errors at once, and snapshot lifetime. Runs from
 * tests/data/pki-cfg so relative certificate paths resolve. */
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "policy/policy.h"
#include "proxy/config.h"
#include "proxy/route.h"

#define BASE_LISTEN "listen:\n  - address: 127.0.0.1:8080\n"
#define BASE_ROUTE                                                                                 \
    "routes:\n"                                                                                    \
    "  - name: app\n"                                                                              \
    "    upstream: {servers: [http://127.0.0.1:9001]}\n"                                           \
    "    public: true\n"

static struct config *parse(const char *yaml, struct conf_diag *d)
{
    return config_parse("t.yaml", yaml, strlen(yaml), d);
}

static bool has_msg(const struct conf_diag *d, const char *msg)
{
    for (size_t i = 0; i < d->stored; i++) {
        if (strcmp(d->msgs[i], msg) == 0) {
            return true;
        }
    }
    return false;
}

/* yaml must fail with msg among its messages; prints the difference otherwise. */
static bool expect_error(const char *yaml, const char *msg)
{
    struct conf_diag d = { 0 };
    struct config *c = parse(yaml, &d);

    if (c || !has_msg(&d, msg)) {
        fprintf(stderr, "--- config:\n%s--- expected:\n%s\n--- got (%zu):\n", yaml, msg, d.count);
        conf_diag_print(&d, stderr);
        config_unref(c);
        conf_diag_fini(&d);
        return false;
    }
    conf_diag_fini(&d);
    return true;
}

static struct config *expect_ok(const char *yaml)
{
    struct conf_diag d = { 0 };
    struct config *c = parse(yaml, &d);
    if (!c) {
        fprintf(stderr, "--- config:\n%s--- unexpected errors:\n", yaml);
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
        fail();
    }
    assert_int_equal(d.count, 0);
    conf_diag_fini(&d);
    return c;
}

static void test_minimal_config_gets_documented_defaults(void **state)
{
    struct config *c = expect_ok(BASE_LISTEN BASE_ROUTE);
    const struct route_conf *r;
    cpu_set_t set;
    long cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                             : sysconf(_SC_NPROCESSORS_ONLN);

    (void)state;
    assert_int_equal(c->nlisteners, 1);
    assert_string_equal(c->listeners[0].host, "127.0.0.1");
    assert_int_equal(c->listeners[0].port, 8080);
    assert_false(c->listeners[0].tls);
    assert_false(c->listeners[0].trust_request_id);
    assert_null(c->admin_address);
    assert_int_equal(c->workers, cores < 1 ? 1 : cores > 256 ? 256 : cores);
    assert_int_equal(c->limits.header_bytes, 32 * 1024);
    assert_int_equal(c->limits.headers, 100);
    assert_int_equal(c->limits.body_bytes, 10 * 1024 * 1024);
    assert_int_equal(c->limits.uri_bytes, 8 * 1024);
    assert_int_equal(c->limits.connections, 100000);
    assert_int_equal(c->timeouts.header_ms, 10000);
    assert_int_equal(c->timeouts.idle_ms, 60000);
    assert_int_equal(c->timeouts.body_ms, 60000);
    assert_int_equal(c->timeouts.upstream_connect_ms, 5000);
    assert_int_equal(c->timeouts.upstream_response_ms, 60000);
    assert_int_equal(c->timeouts.drain_ms, 30000);
    assert_string_equal(c->access_log, "stderr");
    assert_string_equal(c->log_level, "info");
    assert_null(c->state_sqlite);
    assert_int_equal(c->nroutes, 1);
    r = &c->routes[0];
    assert_string_equal(r->name, "app");
    assert_null(r->host);
    assert_string_equal(r->path_prefix, "/");
    assert_false(r->path_case_insensitive);
    assert_false(r->encoded_slashes_pass);
    assert_int_equal(r->upstream.nservers, 1);
    assert_string_equal(r->upstream.servers[0].url, "http://127.0.0.1:9001");
    assert_string_equal(r->upstream.servers[0].host, "127.0.0.1");
    assert_int_equal(r->upstream.servers[0].port, 9001);
    assert_false(r->upstream.servers[0].tls);
    assert_int_equal(r->upstream.balance, BALANCE_ROUND_ROBIN);
    assert_true(r->upstream.tls_verify);
    assert_int_equal(r->upstream.max_idle, 64);
    assert_int_equal(r->upstream.max_conns, 0);
    assert_int_equal(r->upstream.max_fails, 3);
    assert_int_equal(r->upstream.fail_timeout_ms, 10000);
    assert_null(r->upstream.health_path);
    assert_int_equal(r->upstream.health_interval_ms, 5000);
    assert_int_equal(r->upstream.retries, 1);
    assert_false(r->websocket);
    assert_true(r->public_);
    assert_null(r->policy_file);
    assert_null(c->routes[0].idps);
    assert_non_null(c->route_table);
    assert_ptr_equal(route_match_config(c, STR("x"), STR("/")), r);
    config_unref(c);
}

static const char full_yaml[] =
    "listen:\n"
    "  - address: 127.0.0.1:8443\n"
    "    tls:\n"
    "      cert: a.crt\n"
    "      key: a.key\n"
    "      certificates:\n"
    "        - {cert: b.crt, key: b.key}\n"
    "      client_ca: ca.crt\n"
    "      client_crl: ca.crl\n"
    "      client_cert: optional\n"
    "    trust_request_id: true\n"
    "    trust_forwarded: yes\n"
    "  - address: '[::1]:8080'\n"
    "admin: {address: 127.0.0.1:9901}\n"
    "workers: 3\n"
    "limits: {header_bytes: 16k, headers: 50, body_bytes: 1m, uri_bytes: 4k, connections: 500}\n"
    "timeouts: {header: 2s, idle: 1m, body: 30s, upstream_connect: 250ms,\n"
    "           upstream_response: 2m, drain: 5s}\n"
    "access_log: off\n"
    "log_level: debug\n"
    "state: {sqlite: var/gh.db}\n"
    "session: {cookie: gh}\n"
    "identity_providers:\n"
    "  - {id: corp, type: oidc, issuer: 'https://idp.example.com', client_id: gh,\n"
    "     client_secret: s3cret}\n"
    "upstream_identity: {headers: {user: X-User}}\n"
    "opa: {url: http://127.0.0.1:8181}\n"
    "decision_log: {file: var/decisions.jsonl}\n"
    "routes:\n"
    "  - name: wiki\n"
    "    match: {host: Wiki.Example.com, path_prefix: /docs}\n"
    "    upstream:\n"
    "      servers: [http://127.0.0.1:9001, 'https://backend.internal', 'http://[::1]:9003/']\n"
    "      balance: least_conn\n"
    "      ca_file: ca.crt\n"
    "      tls_verify: false\n"
    "      max_idle: 8\n"
    "      max_conns: 100\n"
    "      max_fails: 5\n"
    "      fail_timeout: 30s\n"
    "      health_check: {path: '/healthz?full=1', interval: 2s}\n"
    "      retries: 2\n"
    "    websocket: true\n"
    "    allow_any_authenticated: true\n"
    "    policy: policy.yaml\n"
    "    identity_providers: [corp]\n"
    "  - name: any-sub\n"
    "    match: {host: '*.example.com'}\n"
    "    upstream: {servers: http://127.0.0.1:9004, balance: ip_hash}\n"
    "    public: true\n";

static void test_full_config_reads_every_key(void **state)
{
    struct config *c = expect_ok(full_yaml);
    const struct listener_conf *l = &c->listeners[0];
    const struct route_conf *r = &c->routes[0];

    (void)state;
    assert_int_equal(c->nlisteners, 2);
    assert_true(l->tls);
    assert_int_equal(l->ncerts, 2);
    assert_string_equal(l->certs[0].cert_file, "a.crt");
    assert_string_equal(l->certs[1].key_file, "b.key");
    assert_string_equal(l->client_ca, "ca.crt");
    assert_string_equal(l->client_crl, "ca.crl");
    assert_int_equal(l->client_cert, TLS_CLIENT_CERT_OPTIONAL);
    assert_true(l->trust_request_id);
    assert_true(l->trust_forwarded);
    assert_int_equal(l->line, 2);
    assert_string_equal(c->listeners[1].host, "::1");
    assert_int_equal(c->listeners[1].port, 8080);
    assert_string_equal(c->admin_address, "127.0.0.1:9901");
    assert_int_equal(c->admin_port, 9901);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->limits.header_bytes, 16384);
    assert_int_equal(c->limits.headers, 50);
    assert_int_equal(c->limits.body_bytes, 1048576);
    assert_int_equal(c->limits.uri_bytes, 4096);
    assert_int_equal(c->limits.connections, 500);
    assert_int_equal(c->timeouts.header_ms, 2000);
    assert_int_equal(c->timeouts.idle_ms, 60000);
    assert_int_equal(c->timeouts.upstream_connect_ms, 250);
    assert_int_equal(c->timeouts.upstream_response_ms, 120000);
    assert_int_equal(c->timeouts.drain_ms, 5000);
    assert_null(c->access_log);
    assert_string_equal(c->log_level, "debug");
    assert_string_equal(c->state_sqlite, "var/gh.db");
    assert_string_equal(r->host, "wiki.example.com");
    assert_false(r->host_wildcard);
    assert_string_equal(r->path_prefix, "/docs");
    assert_int_equal(r->upstream.nservers, 3);
    assert_true(r->upstream.servers[1].tls);
    assert_string_equal(r->upstream.servers[1].host, "backend.internal");
    assert_int_equal(r->upstream.servers[1].port, 443);
    assert_string_equal(r->upstream.servers[2].host, "::1");
    assert_int_equal(r->upstream.servers[2].port, 9003);
    assert_int_equal(r->upstream.balance, BALANCE_LEAST_CONN);
    assert_string_equal(r->upstream.ca_file, "ca.crt");
    assert_false(r->upstream.tls_verify);
    assert_int_equal(r->upstream.max_idle, 8);
    assert_int_equal(r->upstream.max_conns, 100);
    assert_int_equal(r->upstream.max_fails, 5);
    assert_int_equal(r->upstream.fail_timeout_ms, 30000);
    assert_string_equal(r->upstream.health_path, "/healthz?full=1");
    assert_int_equal(r->upstream.health_interval_ms, 2000);
    assert_int_equal(r->upstream.retries, 2);
    assert_true(r->websocket);
    assert_true(r->allow_any_authenticated);
    assert_string_equal(r->policy_file, "policy.yaml");
    assert_int_equal(r->nidps, 1);
    assert_string_equal(r->idps[0], "corp");
    assert_int_equal(r->index, 0);
    r = &c->routes[1];
    assert_int_equal(r->index, 1);
    assert_true(r->host_wildcard);
    assert_string_equal(r->host, ".example.com");
    assert_int_equal(r->upstream.nservers, 1);
    assert_int_equal(r->upstream.balance, BALANCE_IP_HASH);
    assert_true(r->public_);
    assert_ptr_equal(route_match_config(c, STR("wiki.example.com"), STR("/docs/a")), &c->routes[0]);
    assert_ptr_equal(route_match_config(c, STR("wiki.example.com"), STR("/other")), &c->routes[1]);
    config_unref(c);
}

struct bad {
    const char *yaml;
    const char *msg;
};

static const struct bad bad_cases[] = {
    /* top level */
    { "", "t.yaml: error: the configuration is empty" },
    { "- a\n", "t.yaml:1:1: error: the configuration must be a map, got a list" },
    { BASE_LISTEN BASE_ROUTE "listn: []\n",
      "t.yaml:7:1: error: unknown key \"listn\" in the configuration (did you mean \"listen\"?)" },
    { BASE_ROUTE, "t.yaml:1:1: error: missing \"listen\": at least one listener is required" },
    { BASE_LISTEN, "t.yaml:1:1: error: missing \"routes\": at least one route is required" },
    { "listen: []\n" BASE_ROUTE,
      "t.yaml:1:9: error: \"listen\" is empty: at least one listener is required" },
    { BASE_LISTEN "routes: []\n",
      "t.yaml:3:9: error: \"routes\" is empty: at least one route is required" },
    { "listen: {address: 1.2.3.4:5}\n" BASE_ROUTE,
      "t.yaml:1:9: error: \"listen\" must be a list, got a map" },
    /* listen */
    { "listen:\n  - address: localhost:8080\n" BASE_ROUTE,
      "t.yaml:2:14: error: \"address\" must be a numeric IPv4 or [IPv6] address and a port from "
      "1 to 65535, such as 127.0.0.1:8080, got \"localhost:8080\"" },
    { "listen:\n  - address: 127.0.0.1:70000\n" BASE_ROUTE,
      "t.yaml:2:14: error: \"address\" must be a numeric IPv4 or [IPv6] address and a port from "
      "1 to 65535, such as 127.0.0.1:8080, got \"127.0.0.1:70000\"" },
    { "listen:\n  - address: 127.0.0.1\n" BASE_ROUTE,
      "t.yaml:2:14: error: \"address\" must be a numeric IPv4 or [IPv6] address and a port from "
      "1 to 65535, such as 127.0.0.1:8080, got \"127.0.0.1\"" },
    { "listen:\n  - {tls: {cert: a.crt, key: a.key}}\n" BASE_ROUTE,
      "t.yaml:2:5: error: missing \"address\" (host:port, such as 127.0.0.1:8080)" },
    { "listen:\n  - address: 127.0.0.1:8080\n  - address: 127.0.0.1:8080\n" BASE_ROUTE,
      "t.yaml:3:14: error: duplicate listen address \"127.0.0.1:8080\" (first at line 2)" },
    { "listen: [127.0.0.1:8080]\n" BASE_ROUTE,
      "t.yaml:1:10: error: a \"listen\" item must be a map such as {address: 127.0.0.1:8080}, "
      "got \"127.0.0.1:8080\"" },
    { "listen:\n  - address: '[::1]:8080'\n  - address: '[0:0::1]:8080'\n" BASE_ROUTE,
      "t.yaml:3:14: error: duplicate listen address \"[0:0::1]:8080\" (first at line 2)" },
    { "listen:\n  - address: 0.0.0.0:8080\n  - address: 127.0.0.1:8080\n" BASE_ROUTE,
      "t.yaml:3:14: error: listen address \"127.0.0.1:8080\" overlaps \"0.0.0.0:8080\" (line "
      "2)" },
    { BASE_LISTEN "admin: {address: 0.0.0.0:8080}\n" BASE_ROUTE,
      "t.yaml:3:18: error: admin address \"0.0.0.0:8080\" overlaps listen address "
      "\"127.0.0.1:8080\" (line 2)" },
    { "listen:\n  - adress: 127.0.0.1:8080\n" BASE_ROUTE,
      "t.yaml:2:5: error: unknown key \"adress\" in a \"listen\" item (did you mean "
      "\"address\"?)" },
    { "listen:\n  - address: 127.0.0.1:8080\n    trust_forwarded: maybe\n" BASE_ROUTE,
      "t.yaml:3:22: error: \"trust_forwarded\" must be true or false, got \"maybe\"" },
    /* tls */
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: a.crt}\n" BASE_ROUTE,
      "t.yaml:3:10: error: \"tls\" has \"cert\" but no \"key\"" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {client_ca: ca.crt}\n" BASE_ROUTE,
      "t.yaml:3:10: error: \"tls\" needs \"cert\" and \"key\" (or a \"certificates\" list)" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: missing.crt, key: a.key}\n" BASE_ROUTE,
      "t.yaml:3:17: error: cannot read \"cert\" file \"missing.crt\": No such file or directory" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: a.crt, key: nokey.pem}\n" BASE_ROUTE,
      "t.yaml:3:29: error: cannot read \"key\" file \"nokey.pem\": No such file or directory" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: /dev/zero, key: a.key}\n" BASE_ROUTE,
      "t.yaml:3:17: error: \"cert\" file \"/dev/zero\" is not a regular file" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: a.crt, key: /tmp}\n" BASE_ROUTE,
      "t.yaml:3:29: error: \"key\" file \"/tmp\" is not a regular file" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: garbage.pem, key: a.key}\n" BASE_ROUTE,
      "t.yaml:3:17: error: \"cert\" file \"garbage.pem\" holds no PEM certificate" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: a.crt, key: encrypted.key}\n" BASE_ROUTE,
      "t.yaml:3:29: error: \"key\" file \"encrypted.key\" holds no unencrypted PEM private key" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: a.crt, key: b.key}\n" BASE_ROUTE,
      "t.yaml:3:29: error: \"key\" file \"b.key\" does not match certificate \"a.crt\"" },
    { "listen:\n  - address: 127.0.0.1:8443\n"
      "    tls: {cert: a.crt, key: a.key, certificates: [{cert: b.crt}]}\n" BASE_ROUTE,
      "t.yaml:3:51: error: a \"certificates\" item has \"cert\" but no \"key\"" },
    { "listen:\n  - address: 127.0.0.1:8443\n"
      "    tls: {cert: a.crt, key: a.key, client_cert: required}\n" BASE_ROUTE,
      "t.yaml:3:49: error: \"client_cert: required\" needs \"client_ca\"" },
    { "listen:\n  - address: 127.0.0.1:8443\n"
      "    tls: {cert: a.crt, key: a.key, client_ca: ca.crt, client_cert: sometimes}\n" BASE_ROUTE,
      "t.yaml:3:68: error: \"client_cert\" must be one of none, optional, required, got "
      "\"sometimes\"" },
    { "listen:\n  - address: 127.0.0.1:8443\n"
      "    tls: {cert: a.crt, key: a.key, client_ca: garbage.pem}\n" BASE_ROUTE,
      "t.yaml:3:47: error: \"client_ca\" file \"garbage.pem\" holds no PEM certificate" },
    { "listen:\n  - address: 127.0.0.1:8443\n"
      "    tls: {cert: a.crt, key: a.key, client_ca: ca.crt, client_crl: a.crt}\n" BASE_ROUTE,
      "t.yaml:3:67: error: \"client_crl\" file \"a.crt\" holds no PEM certificate revocation "
      "list" },
    { "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: a.crt, key: a.key, ciphers: x}\n" BASE_ROUTE,
      "t.yaml:3:36: error: unknown key \"ciphers\" in \"tls\"" },
    /* admin, workers, limits, timeouts, logging */
    { BASE_LISTEN "admin: {address: 127.0.0.1:8080}\n" BASE_ROUTE,
      "t.yaml:3:18: error: admin address \"127.0.0.1:8080\" is also a listen address (line 2)" },
    { BASE_LISTEN "admin: {addr: 127.0.0.1:9000}\n" BASE_ROUTE,
      "t.yaml:3:9: error: unknown key \"addr\" in \"admin\" (did you mean \"address\"?)" },
    { BASE_LISTEN "workers: many\n" BASE_ROUTE,
      "t.yaml:3:10: error: \"workers\" must be \"auto\" or a number from 1 to 256, got "
      "\"many\"" },
    { BASE_LISTEN "workers: 0\n" BASE_ROUTE,
      "t.yaml:3:10: error: \"workers\" must be \"auto\" or a number from 1 to 256, got \"0\"" },
    { BASE_LISTEN "limits: {header_bytes: lots}\n" BASE_ROUTE,
      "t.yaml:3:24: error: \"header_bytes\" must be a size such as 512, 32k, 10m or 1g, got "
      "\"lots\"" },
    { BASE_LISTEN "limits: {headers: 0}\n" BASE_ROUTE,
      "t.yaml:3:19: error: \"headers\" must be between 1 and 10000, got 0" },
    { BASE_LISTEN "limits: {header_bytes: 4k, uri_bytes: 8k}\n" BASE_ROUTE,
      "t.yaml:3:39: error: \"uri_bytes\" (8192) must not exceed \"header_bytes\" (4096): the "
      "request line is part of the header" },
    { BASE_LISTEN "timeouts: {idle: forever}\n" BASE_ROUTE,
      "t.yaml:3:18: error: \"idle\" must be a duration such as 250ms, 10s, 5m, 8h or 7d, got "
      "\"forever\"" },
    { BASE_LISTEN "timeouts: {header: 1ms}\n" BASE_ROUTE,
      "t.yaml:3:20: error: \"header\" must be between 10ms and 3600000ms, got \"1ms\"" },
    { BASE_LISTEN "timeouts: {conect: 1s}\n" BASE_ROUTE,
      "t.yaml:3:12: error: unknown key \"conect\" in \"timeouts\"" },
    { BASE_LISTEN "log_level: verbose\n" BASE_ROUTE,
      "t.yaml:3:12: error: \"log_level\" must be one of debug, info, warn, error, got "
      "\"verbose\"" },
    { BASE_LISTEN "access_log: /nonexistent-dir/access.log\n" BASE_ROUTE,
      "t.yaml:3:13: error: cannot write access log \"/nonexistent-dir/access.log\": directory "
      "No such file or directory" },
    { BASE_LISTEN "access_log: /tmp\n" BASE_ROUTE,
      "t.yaml:3:13: error: access log \"/tmp\" is a directory, not a file" },
    { BASE_LISTEN "state: {sqlite: []}\n" BASE_ROUTE,
      "t.yaml:3:17: error: \"sqlite\" must be a string, got a list" },
    /* routes */
    { BASE_LISTEN "routes:\n  - upstream: {servers: [http://127.0.0.1:1]}\n",
      "t.yaml:4:5: error: route is missing \"name\"" },
    { BASE_LISTEN "routes:\n  - name: a b\n    upstream: {servers: [http://127.0.0.1:1]}\n",
      "t.yaml:4:11: error: route \"name\" must be 1 to 64 letters, digits, '.', '_' or '-', got "
      "\"a b\"" },
    { BASE_LISTEN "routes:\n"
                  "  - {name: a, upstream: {servers: [http://127.0.0.1:1]}}\n"
                  "  - {name: a, match: {path_prefix: /x}, "
                  "upstream: {servers: [http://127.0.0.1:1]}}\n",
      "t.yaml:5:12: error: duplicate route name \"a\" (first at line 4)" },
    { BASE_LISTEN "routes:\n  - name: a\n",
      "t.yaml:4:5: error: route \"a\" has no upstream servers" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: []}\n",
      "t.yaml:5:25: error: route \"a\" has no upstream servers" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {balance: least_conn}\n",
      "t.yaml:5:15: error: route \"a\" has no upstream servers" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: [ftp://h]}\n",
      "t.yaml:5:26: error: upstream server \"ftp://h\" must start with http:// or https://" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: ['http://h:0']}\n",
      "t.yaml:5:26: error: upstream server \"http://h:0\" has an invalid port (expected 1 to "
      "65535)" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: ['http://h:65536']}\n",
      "t.yaml:5:26: error: upstream server \"http://h:65536\" has an invalid port (expected 1 "
      "to 65535)" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: ['http://:80']}\n",
      "t.yaml:5:26: error: upstream server \"http://:80\" has no host" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: ['http://h/app']}\n",
      "t.yaml:5:26: error: upstream server \"http://h/app\" must not have a path, query or user "
      "info (only scheme, host and port)" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: ['http://bad_host']}\n",
      "t.yaml:5:26: error: upstream server \"http://bad_host\" has an invalid host name" },
    { BASE_LISTEN "routes:\n  - name: a\n"
                  "    upstream: {servers: [http://h:1, 'http://H:1/']}\n",
      "t.yaml:5:38: error: upstream server \"http://H:1/\" is listed twice in route \"a\"" },
    { BASE_LISTEN "routes:\n  - name: a\n"
                  "    upstream: {servers: [http://h:1], balance: least_con}\n",
      "t.yaml:5:48: error: \"balance\" must be one of round_robin, least_conn, ip_hash, got "
      "\"least_con\" (did you mean \"least_conn\"?)" },
    { BASE_LISTEN "routes:\n  - name: a\n"
                  "    upstream: {servers: [http://h:1], max_fails: -1}\n",
      "t.yaml:5:50: error: \"max_fails\" must be a whole number, got \"-1\"" },
    { BASE_LISTEN "routes:\n  - name: a\n"
                  "    upstream: {servers: [http://h:1], health_check: {interval: 1s}}\n",
      "t.yaml:5:53: error: \"health_check\" needs \"path\", such as /healthz" },
    { BASE_LISTEN "routes:\n  - name: a\n"
                  "    upstream: {servers: [http://h:1], health_check: {path: '/a b'}}\n",
      "t.yaml:5:60: error: \"path\" must start with \"/\" and hold no spaces or control "
      "characters, got \"/a b\"" },
    { BASE_LISTEN "routes:\n  - name: a\n"
                  "    upstream: {servers: [http://h:1], ca_file: missing.pem}\n",
      "t.yaml:5:48: error: cannot read \"ca_file\" file \"missing.pem\": No such file or "
      "directory" },
    { BASE_LISTEN "routes:\n  - name: a\n    match: {host: 'a.test:80'}\n"
                  "    upstream: {servers: [http://h:1]}\n",
      "t.yaml:5:19: error: \"host\" must be a host name such as app.example.com or "
      "*.example.com (no port), got \"a.test:80\"" },
    { BASE_LISTEN "routes:\n  - name: a\n    match: {path_prefix: api}\n"
                  "    upstream: {servers: [http://h:1]}\n",
      "t.yaml:5:26: error: \"path_prefix\" must start with \"/\" and hold no spaces, \"?\" or "
      "\"#\", got \"api\"" },
    { BASE_LISTEN "routes:\n  - name: a\n    match: {path_prefix: /a/../b}\n"
                  "    upstream: {servers: [http://h:1]}\n",
      "t.yaml:5:26: error: \"path_prefix\" must be a normalised path (no \".\" or \"..\" segments, "
      "no \"//\", no %-escape of a letter, digit or \"-._~\", escapes in upper case), got "
      "\"/a/../b\"" },
    { BASE_LISTEN "routes:\n  - name: a\n    match: {path_prefix: /%61}\n"
                  "    upstream: {servers: [http://h:1]}\n",
      "t.yaml:5:26: error: \"path_prefix\" must be a normalised path (no \".\" or \"..\" segments, "
      "no \"//\", no %-escape of a letter, digit or \"-._~\", escapes in upper case), got "
      "\"/%61\"" },
    { BASE_LISTEN "routes:\n  - name: a\n    encoded_slashes: decode\n"
                  "    upstream: {servers: [http://h:1]}\n",
      "t.yaml:5:22: error: \"encoded_slashes\" must be one of reject, pass, got \"decode\"" },
    { BASE_LISTEN "routes:\n  - name: a\n    match: {path_case_insensitive: 1}\n"
                  "    upstream: {servers: [http://h:1]}\n",
      "t.yaml:5:36: error: \"path_case_insensitive\" must be true or false, got \"1\"" },
    { BASE_LISTEN "routes:\n"
                  "  - {name: a, match: {host: x.test, path_prefix: /p}, "
                  "upstream: {servers: [http://h:1]}}\n"
                  "  - {name: b, match: {host: X.TEST, path_prefix: /p}, "
                  "upstream: {servers: [http://h:1]}}\n",
      "t.yaml:5:5: error: route \"b\" has the same host and path_prefix as route \"a\" (line 4)" },
    { BASE_LISTEN "routes:\n"
                  "  - {name: a, upstream: {servers: [http://h:1]}}\n"
                  "  - {name: b, match: {path_prefix: /}, upstream: {servers: [http://h:1]}}\n",
      "t.yaml:5:5: error: route \"b\" has the same host and path_prefix as route \"a\" (line 4)" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: [http://h:1]}\n"
                  "    identity_providers: [crop]\n",
      "t.yaml:6:26: error: route \"a\" uses identity provider \"crop\", which is not defined" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: [http://h:1]}\n"
                  "    policy: policies/none.yaml\n",
      "t.yaml:6:13: error: cannot read \"policy\" file \"policies/none.yaml\": No such file or "
      "directory" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: [http://h:1]}\n"
                  "    websockets: true\n",
      "t.yaml:6:5: error: unknown key \"websockets\" in a route (did you mean \"websocket\"?)" },
    { BASE_LISTEN "routes:\n  - name: a\n    upstream: {servers: [http://h:1], retry: 2}\n",
      "t.yaml:5:39: error: unknown key \"retry\" in \"upstream\"" },
    /* YAML itself */
    { BASE_LISTEN BASE_ROUTE "workers: 1\nworkers: 2\n",
      "t.yaml:8:1: error: duplicate key \"workers\" (first at line 7)" },
};

static void test_each_bad_config_has_its_exact_message(void **state)
{
    size_t failed = 0;

    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        failed += !expect_error(bad_cases[i].yaml, bad_cases[i].msg);
    }
    assert_int_equal(failed, 0);
}

static void test_several_errors_are_reported_at_once(void **state)
{
    struct conf_diag d = { 0 };
    const char *yaml = "listen:\n  - address: nowhere\n"
                       "workers: lots\n"
                       "routes:\n  - name: a\n  - name: a\n    upstream: {servers: [gopher://x]}\n";
    (void)state;
    assert_null(parse(yaml, &d));
    assert_int_equal(d.count, 5);
    assert_true(has_msg(&d, "t.yaml:5:5: error: route \"a\" has no upstream servers"));
    assert_true(has_msg(&d, "t.yaml:6:11: error: duplicate route name \"a\" (first at line 5)"));
    assert_true(has_msg(&d, "t.yaml:7:26: error: upstream server \"gopher://x\" must start "
                            "with http:// or https://"));
    conf_diag_fini(&d);
}

static void test_more_than_20_errors_keep_the_first_20_and_count_all(void **state)
{
    char yaml[8192];
    size_t n = 0;
    struct conf_diag d = { 0 };

    (void)state;
    n += (size_t)snprintf(yaml + n, sizeof yaml - n, "%s", BASE_LISTEN "routes:\n");
    for (int i = 0; i < 25; i++) {
        n += (size_t)snprintf(yaml + n, sizeof yaml - n,
                              "  - {name: r%d, match: {path_prefix: /%d}}\n", i, i);
    }
    assert_null(parse(yaml, &d));
    assert_int_equal(d.count, 25);
    assert_int_equal(d.stored, 20);
    assert_string_equal(d.msgs[0], "t.yaml:4:5: error: route \"r0\" has no upstream servers");
    conf_diag_fini(&d);
}

static void test_too_many_servers_in_a_route(void **state)
{
    char yaml[16384];
    size_t n = 0;
    (void)state;
    n += (size_t)snprintf(yaml + n, sizeof yaml - n, "%s",
                          BASE_LISTEN "routes:\n  - name: big\n    upstream:\n      servers:\n");
    for (int i = 0; i < 257; i++) {
        n += (size_t)snprintf(yaml + n, sizeof yaml - n, "        - http://10.0.%d.%d:80\n",
                              i / 256, i % 256);
    }
    assert_true(n < sizeof yaml);
    assert_true(expect_error(yaml, "t.yaml:7:9: error: route \"big\" has 257 upstream servers, "
                                   "at most 256 are supported"));
}

static void test_load_missing_file_says_so(void **state)
{
    struct conf_diag d = { 0 };
    (void)state;
    assert_null(config_load("does-not-exist.yaml", &d));
    assert_int_equal(d.count, 1);
    assert_string_equal(d.msgs[0],
                        "does-not-exist.yaml: error: cannot open: No such file or directory");
    conf_diag_fini(&d);
}

static void test_load_resolves_paths_against_the_file_directory(void **state)
{
    char dir[] = "/tmp/gh-cfg-XXXXXX";
    char path[512], cert[512];
    struct conf_diag d = { 0 };
    struct config *c;
    FILE *f;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/gatehouse.yaml", dir);
    assert_non_null(getcwd(cert, sizeof cert));
    f = fopen(path, "w");
    assert_non_null(f);
    /* The certificate is named relative to the config file's directory. */
    fprintf(f,
            "listen:\n  - address: 127.0.0.1:8443\n    tls: {cert: '%s/a.crt', key: "
            "'%s/a.key'}\n"
            "state: {sqlite: var/db.sqlite}\n" BASE_ROUTE,
            cert, cert);
    fclose(f);
    c = config_load(path, &d);
    if (!c) {
        conf_diag_print(&d, stderr);
    }
    assert_non_null(c);
    snprintf(cert, sizeof cert, "%s/var/db.sqlite", dir);
    assert_string_equal(c->state_sqlite, cert);
    assert_string_equal(c->file, path);
    config_unref(c);
    conf_diag_fini(&d);
    unlink(path);
    rmdir(dir);
}

static void test_snapshot_refcount_frees_at_zero_and_reload_is_repeatable(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        struct config *c = expect_ok(full_yaml);
        assert_ptr_equal(config_ref(c), c);
        assert_int_equal(atomic_load(&c->refs), 2);
        config_unref(c);
        assert_int_equal(atomic_load(&c->refs), 1);
        config_unref(c); /* LeakSanitizer proves the rest is freed */
    }
    config_unref(NULL);
}

static void test_workers_auto_and_number(void **state)
{
    struct config *c = expect_ok(BASE_LISTEN "workers: auto\n" BASE_ROUTE);
    (void)state;
    assert_true(c->workers >= 1);
    config_unref(c);
    c = expect_ok(BASE_LISTEN "workers: 7\n" BASE_ROUTE);
    assert_int_equal(c->workers, 7);
    config_unref(c);
}

static void test_distinct_addresses_on_one_port_are_fine(void **state)
{
    struct config *c = expect_ok("listen:\n  - address: 127.0.0.1:8080\n"
                                 "  - address: 127.0.0.2:8080\n"
                                 "  - address: '[::]:8080'\n"
                                 "admin: {address: '[::1]:8081'}\n" BASE_ROUTE);
    (void)state;
    assert_int_equal(c->nlisteners, 3);
    config_unref(c);
}

static void test_access_log_stderr_off_and_path(void **state)
{
    struct config *c = expect_ok(BASE_LISTEN "access_log: stderr\n" BASE_ROUTE);
    (void)state;
    assert_string_equal(c->access_log, "stderr");
    config_unref(c);
    c = expect_ok(BASE_LISTEN "access_log: 'off'\n" BASE_ROUTE);
    assert_null(c->access_log);
    config_unref(c);
    c = expect_ok(BASE_LISTEN "access_log: /tmp/gh-access.log\n" BASE_ROUTE);
    assert_string_equal(c->access_log, "/tmp/gh-access.log");
    config_unref(c);
}

/* Issue 11: each route carries the policy it gets, resolved once by the loader:
 * a file wins; public alone is public; public + allow_any_authenticated,
 * allow_any_authenticated alone and no flag at all are any signed-in user. */
static void test_route_policy_resolved_once(void **state)
{
    (void)state;
    struct config *c = expect_ok(
        BASE_LISTEN
        "state: {sqlite: /tmp/gh-unit-state.db}\n"
        "identity_providers:\n"
        "  - {id: corp, type: oidc, issuer: 'https://idp.example.com', client_id: gh,\n"
        "     client_secret: s}\n"
        "routes:\n"
        "  - {name: pub, match: {path_prefix: /p}, public: true,\n"
        "     upstream: {servers: [http://127.0.0.1:9001]}}\n"
        "  - {name: both, match: {path_prefix: /b}, public: true, allow_any_authenticated: true,\n"
        "     upstream: {servers: [http://127.0.0.1:9001]}}\n"
        "  - {name: any, match: {path_prefix: /a}, allow_any_authenticated: true,\n"
        "     upstream: {servers: [http://127.0.0.1:9001]}}\n"
        "  - {name: none, match: {path_prefix: /n}, upstream: {servers: [http://127.0.0.1:9001]}}\n");
    static const enum route_policy want[] = { ROUTE_POLICY_PUBLIC, ROUTE_POLICY_SIGNED_IN,
                                              ROUTE_POLICY_SIGNED_IN, ROUTE_POLICY_SIGNED_IN };
    static const char *const rule[] = { "public", "allow-any-authenticated",
                                        "allow-any-authenticated", "allow-any-authenticated" };
    assert_int_equal(c->nroutes, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(c->routes[i].policy_kind, want[i]);
        assert_non_null(c->routes[i].policy);
        assert_string_equal(policy_rule_id(c->routes[i].policy, 0), rule[i]);
    }
    config_unref(c);
}

/* The key tables' one pass: a bad value is reported once, at its position, and
 * an unknown key does not stop the section's known keys from being checked. */
static void test_key_tables_report_each_problem_once(void **state)
{
    (void)state;
    struct conf_diag d = { 0 };
    struct config *c =
        parse(BASE_LISTEN "routes:\n"
                          "  - name: app\n"
                          "    match: {path_case_insensitive: maybe}\n"
                          "    upstream: {servers: [http://127.0.0.1:9001], retries: 99,"
                          " bogus: 1}\n"
                          "    public: true\n",
              &d);
    assert_null(c);
    assert_int_equal(d.count, 3);
    assert_true(has_msg(&d, "t.yaml:5:36: error: \"path_case_insensitive\" must be true or "
                            "false, got \"maybe\""));
    assert_true(has_msg(&d, "t.yaml:6:59: error: \"retries\" must be between 0 and 10, got 99"));
    assert_true(has_msg(&d, "t.yaml:6:63: error: unknown key \"bogus\" in \"upstream\""));
    conf_diag_fini(&d);
}

int main(void)
{
    const char *data = getenv("GH_TEST_DATA");
    char dir[1024];

    snprintf(dir, sizeof dir, "%s/pki-cfg", data ? data : "tests/data");
    if (chdir(dir) != 0) {
        fprintf(stderr, "cannot chdir to %s\n", dir);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_config_gets_documented_defaults),
        cmocka_unit_test(test_route_policy_resolved_once),
        cmocka_unit_test(test_key_tables_report_each_problem_once),
        cmocka_unit_test(test_full_config_reads_every_key),
        cmocka_unit_test(test_each_bad_config_has_its_exact_message),
        cmocka_unit_test(test_several_errors_are_reported_at_once),
        cmocka_unit_test(test_more_than_20_errors_keep_the_first_20_and_count_all),
        cmocka_unit_test(test_too_many_servers_in_a_route),
        cmocka_unit_test(test_load_missing_file_says_so),
        cmocka_unit_test(test_load_resolves_paths_against_the_file_directory),
        cmocka_unit_test(test_snapshot_refcount_frees_at_zero_and_reload_is_repeatable),
        cmocka_unit_test(test_workers_auto_and_number),
        cmocka_unit_test(test_distinct_addresses_on_one_port_are_fine),
        cmocka_unit_test(test_access_log_stderr_off_and_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
