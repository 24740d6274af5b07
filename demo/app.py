#!/usr/bin/env python3
"""Gatehouse demo app: shows, as an HTML page, the request it received from the
proxy, with the identity headers (X-Gatehouse-*), X-Request-Id and the
X-Forwarded-* headers highlighted. Python stdlib only.

    python3 demo/app.py [--port 9001]

GET /healthz answers "ok"; GET /api/request answers the same data as JSON;
POST bodies are counted and hashed, not stored."""
import argparse
import hashlib
import html
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HIGHLIGHT_PREFIXES = ("x-gatehouse-",)
HIGHLIGHT_NAMES = ("x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                   "via")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Gatehouse demo app</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #1d2330;
       padding: 0 1rem; }}
h1 {{ font-size: 1.4rem; margin-bottom: .2rem; }}
.sub {{ color: #5a6275; margin-top: 0; }}
.card {{ border: 1px solid #d8dce6; border-radius: 8px; padding: 1rem 1.2rem; margin: 1rem 0; }}
.who {{ background: #f2f8f2; border-color: #9cc89c; }}
.anon {{ background: #fbf6ea; border-color: #e2c98b; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eceef3;
          vertical-align: top; }}
td.v {{ font-family: ui-monospace, monospace; word-break: break-all; }}
tr.identity td {{ background: #e6f4e6; font-weight: 600; }}
tr.proxy td {{ background: #eef2fb; }}
code {{ font-family: ui-monospace, monospace; }}
</style></head>
<body>
<h1>Gatehouse demo app</h1>
<p class="sub">This page is served by the app <em>behind</em> Gatehouse and shows exactly what
the proxy sent it.</p>
{identity}
<div class="card">
<b>Request</b>: <code>{method} {target} {version}</code><br>
<b>Request id</b>: <code>{request_id}</code><br>
<b>Client (as seen by the app)</b>: <code>{peer}</code> &middot;
<b>body</b>: {body_len} bytes
</div>
<div class="card">
<b>Headers received</b> (green: identity from Gatehouse, blue: added by the proxy)
<table>{rows}</table>
</div>
</body></html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = "gatehouse-demo-app/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("demo-app: %s %s\n" % (self.address_string(), fmt % args))

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        h = hashlib.sha256()
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        return n - left, h.hexdigest()

    def _data(self, body_len):
        return {
            "method": self.command, "target": self.path, "version": self.request_version,
            "peer": self.client_address[0], "body_len": body_len,
            "headers": [[k, v] for k, v in self.headers.items()],
            "identity": {k: v for k, v in self.headers.items()
                         if k.lower().startswith(HIGHLIGHT_PREFIXES)},
            "request_id": self.headers.get("X-Request-Id"),
        }

    def _send(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        body_len, _ = self._body()
        if self.path == "/healthz":
            self._send(200, "text/plain", b"ok\n")
            return
        d = self._data(body_len)
        if self.path.startswith("/api/"):
            self._send(200, "application/json", json.dumps(d, indent=2).encode() + b"\n")
            return
        rows = []
        for k, v in d["headers"]:
            kl = k.lower()
            cls = "identity" if kl.startswith(HIGHLIGHT_PREFIXES) else \
                "proxy" if kl in HIGHLIGHT_NAMES else ""
            rows.append(f'<tr class="{cls}"><th>{html.escape(k)}</th>'
                        f'<td class="v">{html.escape(v)}</td></tr>')
        if d["identity"]:
            items = "".join(f"<li><code>{html.escape(k)}</code>: <b>{html.escape(v)}</b></li>"
                            for k, v in d["identity"].items())
            identity = f'<div class="card who"><b>Signed in</b> — identity from Gatehouse:' \
                       f'<ul>{items}</ul></div>'
        else:
            identity = ('<div class="card anon"><b>No identity headers.</b> This route is '
                        '<code>public: true</code> (or sign-in is not configured yet), so '
                        'Gatehouse forwarded the request without <code>X-Gatehouse-*</code> '
                        'headers.</div>')
        page = PAGE.format(identity=identity, method=html.escape(d["method"]),
                           target=html.escape(d["target"]), version=html.escape(d["version"]),
                           request_id=html.escape(d["request_id"] or "(none)"),
                           peer=html.escape(d["peer"]), body_len=body_len, rows="".join(rows))
        self._send(200, "text/html; charset=utf-8", page.encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--address", default="127.0.0.1")
    args = ap.parse_args()
    srv = ThreadingHTTPServer((args.address, args.port), Handler)
    srv.daemon_threads = True
    sys.stderr.write(f"demo-app: listening on http://{args.address}:{args.port}\n")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
