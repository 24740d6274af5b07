#!/usr/bin/env python3
"""OPA stand-in: a small test server that speaks the part of OPA's Data API that
Gatehouse uses. It is NOT Open Policy Agent and evaluates no Rego.

    POST /v1/data/<path>   body {"input": {...}}   ->   {"result": ...}

Rules come from a JSON file (--rules FILE), a map from data path to a list of
clauses tried in order; the first clause whose "match" holds gives the result:

    {
      "gatehouse/wiki/allow": [
        {"match": {"user.id": "alice"}, "result": true},
        {"match": {"user.groups": "contractors"},
         "result": {"allow": true, "reason": "contractor on project list"}},
        {"result": false}
      ],
      "gatehouse/slow": [{"delay_ms": 2000, "result": true}],
      "gatehouse/broken": [{"status": 500}]
    }

"match" keys are dotted paths into the input; a list value in the input matches
when it contains the expected value. A path with no rules (or no matching clause)
answers {} - OPA's "undefined". A clause may say "status" (HTTP error), "raw"
(send this body as is) or "delay_ms". GET /health answers 200; GET /stats
returns how many queries each path received (tests use it to see cache hits).

Usage: opa_standin.py --rules rules.json [--port 0] [--port-file F]
It listens on 127.0.0.1 only and prints "listening on 127.0.0.1:PORT".
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def lookup(doc, dotted):
    cur = doc
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def matches(clause, inp):
    for key, want in clause.get("match", {}).items():
        got = lookup(inp, key)
        if isinstance(got, list):
            if want not in got:
                return False
        elif got != want:
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    server_version = "opa-standin/1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("opa-standin: " + (fmt % args) + "\n")

    def reply(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {})
        elif self.path == "/stats":
            with self.server.lock:
                self.reply(200, dict(self.server.stats))
        else:
            self.reply(404, {"code": "not_found"})

    def do_POST(self):
        if not self.path.startswith("/v1/data/"):
            self.reply(404, {"code": "not_found"})
            return
        path = self.path[len("/v1/data/"):].split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            inp = body.get("input", {})
        except (ValueError, AttributeError):
            self.reply(400, {"code": "invalid_parameter", "message": "bad JSON"})
            return
        with self.server.lock:
            self.server.stats[path] = self.server.stats.get(path, 0) + 1
            self.server.inputs.append({"path": path, "input": inp})
        for clause in self.server.rules.get(path, []):
            if not matches(clause, inp):
                continue
            if clause.get("delay_ms"):
                time.sleep(clause["delay_ms"] / 1000.0)
            if "status" in clause:
                self.reply(clause["status"], {"code": "internal_error"})
            elif "raw" in clause:
                self.reply(200, clause["raw"].encode())
            else:
                self.reply(200, {"result": clause.get("result")})
            return
        self.reply(200, {})  # undefined


def make_server(rules, port=0, verbose=False):
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    srv.rules = rules
    srv.stats = {}
    srv.inputs = []
    srv.lock = threading.Lock()
    srv.verbose = verbose
    return srv


def main():
    ap = argparse.ArgumentParser(description="OPA Data API stand-in (not OPA)")
    ap.add_argument("--rules", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    with open(a.rules) as f:
        rules = json.load(f)
    srv = make_server(rules, a.port, a.verbose)
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file, "w") as f:
            f.write(str(port))
    print("listening on 127.0.0.1:%d" % port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
