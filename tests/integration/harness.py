"""Shared helpers for the integration tests (Python 3 stdlib only).

- Gatehouse: writes a gatehouse.yaml into a temp dir, starts the real binary
  ($GATEHOUSE_BIN) on free 127.0.0.1 ports, waits until it accepts, collects its
  stderr, stops it.
- Backend: a real threaded HTTP/1.1 server (keep-alive, chunked both ways,
  streamed bodies hashed on the fly, large/slow/closing responses, 1xx/204/304,
  HEAD, WebSocket echo with a real handshake, optional TLS).
- Raw client helpers: send exact bytes on a socket and parse what comes back,
  so strictness and pipelining can be asserted byte by byte.
- Certificates made at test time with the openssl CLI.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Timeouts are generous because the same suite runs under ASan + UBSan.
START_TIMEOUT = float(os.environ.get("GATEHOUSE_START_TIMEOUT", "15"))
IO_TIMEOUT = 10.0


def gatehouse_bin():
    b = os.environ.get("GATEHOUSE_BIN")
    if not b:
        b = os.path.join(ROOT, "build", "gatehouse")
    return b


# Ports handed out by free_port() come from below the kernel's ephemeral range
# (ip_local_port_range, 32768-60999 by default), so that no outgoing connection
# and no bind to port 0 (a Backend, another module's client) can take one between
# the call and the moment gatehouse binds it, which may be minutes later for a
# port chosen in setUpModule. Modules running in parallel (run.py --jobs) and
# other test runs on the machine hand out distinct ports: each port is reserved
# with a POSIX record lock on byte <port> of one shared file, held until this
# process exits.
_PORT_LO, _PORT_HI = 20000, 32000
_port_lock = threading.Lock()
_port_fd = None
_ports_given = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A port on 127.0.0.1 that nothing listens on, outside the ephemeral range,
    and that no other caller (in this process or another one) gets until this
    process exits."""
    import fcntl
    import random
    global _port_fd
    lo, hi = _PORT_LO, _PORT_HI
    elo, ehi = _ephemeral_range()
    if not (hi <= elo or lo > ehi):  # unusual ephemeral range: fall back to the kernel's pick
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port
    with _port_lock:
        if _port_fd is None:
            path = os.path.join(tempfile.gettempdir(), "gatehouse-it-port-reservations")
            try:
                _port_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError:  # another user's file: one of our own
                _port_fd = os.open("%s-%d" % (path, os.getuid()), os.O_RDWR | os.O_CREAT, 0o600)
        start = random.randrange(lo, hi)
        for i in range(hi - lo):
            port = lo + (start - lo + i) % (hi - lo)
            if port in _ports_given:
                continue
            try:
                fcntl.lockf(_port_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
            except OSError:
                continue  # another process has it
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                fcntl.lockf(_port_fd, fcntl.LOCK_UN, 1, port)
                continue  # in use (or in TIME_WAIT) right now
            finally:
                s.close()
            _ports_given.add(port)
            return port
    raise RuntimeError("no free port between %d and %d" % (lo, hi))


# ---------------------------------------------------------------- YAML writer

_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:*@+-]*$")
_SPECIAL = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _SPECIAL and not s.endswith(":"):
        return s
    return json.dumps(s)


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts/lists/scalars (plain scalars when safe, so
    durations like 10s and sizes like 32k stay unquoted)."""
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n{to_yaml(v, indent + 2)}")
            elif isinstance(v, dict):
                out.append(f"{pad}{k}: {{}}\n")
            elif isinstance(v, list):
                out.append(f"{pad}{k}: []\n")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}\n")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 2)
                out.append(f"{pad}- {inner[indent + 2:]}")
            else:
                out.append(f"{pad}- {_scalar(v)}\n")
    else:
        out.append(pad + _scalar(obj) + "\n")
    return "".join(out)


# ---------------------------------------------------------------- payload pattern

_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern_chunks(n, chunk=len(_BLOCK)):
    """Yields n bytes of a deterministic pattern (period 256), chunk bytes at a
    time; chunk must be a multiple of 256 so every chunking gives the same bytes."""
    assert chunk % 256 == 0
    block = _BLOCK * (chunk // len(_BLOCK) + 1)
    left = n
    while left > 0:
        k = min(left, chunk)
        yield block[:k]
        left -= k


_PATTERN_SHA = {}


def pattern_sha(n):
    if n not in _PATTERN_SHA:
        h = hashlib.sha256()
        for c in pattern_chunks(n):
            h.update(c)
        _PATTERN_SHA[n] = h.hexdigest()
    return _PATTERN_SHA[n]


# ---------------------------------------------------------------- raw HTTP parsing

class Response:
    def __init__(self, status, reason, headers, body, interim=None, version="HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), as received
        self.body = body
        self.interim = interim or []  # list of (status, headers) 1xx responses
        self.version = version

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body={self.body[:200]!r}>"


class ConnectionClosed(Exception):
    pass


class Reader:
    """Buffered reader over a socket that parses HTTP/1.x messages."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionClosed("connection closed by peer")
        self.buf += data

    def readline(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 1], self.buf[i + 1:]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_some(self, maxn):
        if not self.buf:
            self._fill()
        data, self.buf = self.buf[:maxn], self.buf[maxn:]
        return data

    def read_to_eof(self):
        chunks = [self.buf]
        self.buf = b""
        while True:
            d = self.sock.recv(262144)
            if not d:
                break
            chunks.append(d)
        return b"".join(chunks)

    def read_head(self):
        line = self.readline()
        while line in (b"\r\n", b"\n"):
            line = self.readline()
        start = line.rstrip(b"\r\n").decode("latin-1")
        headers = []
        while True:
            h = self.readline()
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        return start, headers

    def read_chunked(self, sink=None):
        body = []
        while True:
            size_line = self.readline().rstrip(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while self.readline() not in (b"\r\n", b"\n"):
                    pass
                break
            left = size
            while left:
                d = self.read_some(min(left, 262144))
                left -= len(d)
                if sink:
                    sink(d)
                else:
                    body.append(d)
            if self.read_exact(2) != b"\r\n":
                raise ValueError("bad chunk terminator")
        return b"".join(body)

    def read_response(self, method="GET", sink=None):
        """Reads one response (after any 1xx). sink(bytes) receives the body
        instead of buffering it when given."""
        interim = []
        while True:
            start, headers = self.read_head()
            parts = start.split(" ", 2)
            version, status = parts[0], int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            if 100 <= status < 200 and status != 101:
                interim.append((status, headers))
                continue
            break
        resp = Response(status, reason, headers, b"", interim, version)
        if method == "HEAD" or status in (204, 304) or status == 101:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te and "chunked" in te.lower():
            resp.body = self.read_chunked(sink)
        elif cl is not None:
            n = int(cl)
            if sink:
                left = n
                while left:
                    d = self.read_some(min(left, 262144))
                    left -= len(d)
                    sink(d)
            else:
                resp.body = self.read_exact(n)
        else:
            resp.body = self.read_to_eof()
            if sink:
                sink(resp.body)
                resp.body = b""
        return resp


def connect(port, host="127.0.0.1", timeout=IO_TIMEOUT, source=None):
    s = socket.create_connection((host, port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class RawConn:
    """One client connection: send exact bytes, read parsed responses."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT, source=None, tls=None,
                 server_hostname=None):
        self.sock = connect(port, host, timeout, source)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
        self.reader = Reader(self.sock)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def request(self, method="GET", path="/", host="app.test", headers=None, body=None):
        self.send(build_request(method, path, host, headers, body))
        return self.read_response(method)

    def read_response(self, method="GET", sink=None):
        return self.reader.read_response(method, sink)

    def is_closed(self, timeout=3.0):
        """True when the peer closes (EOF or reset) within timeout with no more data."""
        self.sock.settimeout(timeout)
        try:
            if self.reader.buf:
                return False
            d = self.sock.recv(1)
            return d == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def build_request(method="GET", path="/", host="app.test", headers=None, body=None):
    lines = [f"{method} {path} HTTP/1.1"]
    names = set()
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in (headers or []):
        lines.append(f"{k}: {v}")
        names.add(k.lower())
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        head += body if isinstance(body, bytes) else body.encode()
    return head


def request(port, method="GET", path="/", host="app.test", headers=None, body=None,
            timeout=IO_TIMEOUT, source=None):
    """One request on a fresh connection (closed afterwards)."""
    hdrs = list(headers or [])
    if not any(k.lower() == "connection" for k, _ in hdrs):
        hdrs.append(("Connection", "close"))
    with RawConn(port, timeout=timeout, source=source) as c:
        return c.request(method, path, host, hdrs, body)


def raw_exchange(port, data, timeout=5.0):
    """Sends data, returns (first response or None, closed_after) where closed_after
    says whether the server closed the connection after that response."""
    with RawConn(port, timeout=timeout) as c:
        c.send(data)
        try:
            resp = c.read_response()
        except (ConnectionClosed, ConnectionResetError):
            return None, True
        return resp, c.is_closed(timeout)


# ---------------------------------------------------------------- certificates

def openssl(*args, cwd=None, input=None):
    r = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr.decode()}")
    return r


class CertFactory:
    """A test CA and leaf certificates, all made with the openssl CLI."""

    def __init__(self, dirpath, ca_name="Gatehouse Test CA"):
        self.dir = dirpath
        os.makedirs(dirpath, exist_ok=True)
        self.ca_key = os.path.join(dirpath, "ca.key")
        self.ca_crt = os.path.join(dirpath, "ca.crt")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", self.ca_key, "-out", self.ca_crt, "-days", "2",
                "-subj", f"/CN={ca_name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(self, name, dns=(), ips=(), uris=(), emails=(), start=None, end=None,
             subject=None, file_name=None):
        """Returns (cert_path, key_path) for CN=name with the given SANs. start/end
        ("YYYYMMDDHHMMSSZ") set the validity through `openssl ca` (an expired
        certificate); subject replaces "/CN=name"; file_name the files' base name."""
        if start or end:
            return self._ca_leaf(file_name or name, subject or f"/CN={name}", start, end,
                                 [f"DNS:{d}" for d in dns] + [f"URI:{u}" for u in uris] +
                                 [f"email:{e}" for e in emails])
        if file_name or subject or uris or emails:
            return self._leaf2(file_name or name, subject or f"/CN={name}",
                               [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips] +
                               [f"URI:{u}" for u in uris] + [f"email:{e}" for e in emails])
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        crt = os.path.join(self.dir, f"{name}.crt")
        ext = os.path.join(self.dir, f"{name}.ext")
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n")
            f.write("keyUsage=critical,digitalSignature,keyEncipherment\n")
            f.write("extendedKeyUsage=serverAuth,clientAuth\n")
            if sans:
                f.write("subjectAltName=" + ",".join(sans) + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)
        return crt, key

    def _ext(self, name, sans):
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n")
            f.write("keyUsage=critical,digitalSignature,keyEncipherment\n")
            f.write("extendedKeyUsage=clientAuth\n")
            if sans:
                f.write("subjectAltName=" + ",".join(sans) + "\n")
        return ext

    def _leaf2(self, name, subject, sans):
        key, csr, crt = (os.path.join(self.dir, f"{name}.{x}") for x in ("key", "csr", "crt"))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", subject)
        openssl("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                "-CAcreateserial", "-out", crt, "-days", "2", "-extfile",
                self._ext(name, sans))
        return crt, key

    def _ca_setup(self):
        cnf = os.path.join(self.dir, "ca.cnf")
        if not os.path.exists(cnf):
            with open(cnf, "w") as f:
                f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\n"
                        "crlnumber = crlnumber\nnew_certs_dir = .\nserial = serial\n"
                        "default_md = sha256\ndefault_crl_days = 2\npolicy = p\n"
                        "unique_subject = no\n[p]\ncommonName = supplied\n")
            open(os.path.join(self.dir, "index.txt"), "w").close()
            with open(os.path.join(self.dir, "crlnumber"), "w") as f:
                f.write("1000\n")
            with open(os.path.join(self.dir, "serial"), "w") as f:
                f.write("5000\n")
        return cnf

    def _ca_leaf(self, name, subject, start, end, sans):
        cnf = self._ca_setup()
        key, csr, crt = (os.path.join(self.dir, f"{name}.{x}") for x in ("key", "csr", "crt"))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", subject)
        args = ["ca", "-batch", "-config", cnf, "-keyfile", self.ca_key, "-cert", self.ca_crt,
                "-in", csr, "-out", crt, "-notext", "-extfile", self._ext(name, sans)]
        if start:
            args += ["-startdate", start]
        args += ["-enddate", end] if end else ["-days", "2"]
        openssl(*args, cwd=self.dir)
        return crt, key

    def revoke(self, crt):
        """Marks crt (made by this CA) revoked in the CA database."""
        openssl("ca", "-config", self._ca_setup(), "-keyfile", self.ca_key, "-cert",
                self.ca_crt, "-revoke", crt, cwd=self.dir)

    def crl(self, out, expired=False):
        """Writes a CRL of every revoked certificate to out (atomically); expired:
        one whose nextUpdate has passed."""
        extra = ["-crl_lastupdate", "20200101000000Z", "-crl_nextupdate",
                 "20200102000000Z"] if expired else []
        openssl("ca", "-config", self._ca_setup(), "-keyfile", self.ca_key, "-cert",
                self.ca_crt, "-gencrl", "-out", out + ".new", *extra, cwd=self.dir)
        os.replace(out + ".new", out)


# ---------------------------------------------------------------- backend

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode, payload, mask=True, fin=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
            _xor_mask(payload, key)
        return head + key + masked
    return head + payload


def _xor_mask(payload, key):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def ws_read_frame(reader):
    """Returns (fin, opcode, payload) from a Reader."""
    b0, b1 = reader.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", reader.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.read_exact(8))[0]
    key = reader.read_exact(4) if b1 & 0x80 else None
    payload = reader.read_exact(n)
    if key:
        payload = _xor_mask(payload, key) if n >= 4096 else \
            bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bool(b0 & 0x80), b0 & 0x0F, payload


class Backend:
    """A threaded HTTP/1.1 origin server on 127.0.0.1.

    Paths (query parameters in brackets):
      /health                         200 "ok" (or health_status when set)
      /large [bytes, chunked=1]       pattern bytes generated on the fly
      /chunked [chunks, size]         chunked response of chunks x size bytes
        [delay_ms]                    a pause after each chunk
        [gate=NAME]                   after the first chunk, waits (up to 60 s) until
                                      the test calls open_gate(NAME)
      /slow [ms]                      waits, then echoes
      /close                          closes the connection without a response
      /status [code]                  answers that status (204/304 without body)
      /early                          103 Early Hints, then the echo
      /eof [n]                        body delimited by closing the connection
      /ambiguous                      response with both Content-Length and chunked
      /then-close                     keep-alive answer, then the idle connection is closed
      /garbage                        malformed response head
      /truncated                      Content-Length 1000, 100 bytes sent, connection closed
      any path [read_delay_ms]        waits before reading the request body
      /hop                            response with hop-by-hop headers to strip
      /ws                             WebSocket echo (real handshake)
      /ws-badaccept                   WebSocket handshake answered with a wrong
                                      Sec-WebSocket-Accept (then echo)
      /switch                         101 Switching Protocols to any request (Upgrade:
                                      the client's, or h2c), then reads HTTP/1.1
                                      requests from the "tunnel" and records them: what
                                      a naive h2c backend does with a smuggled request
      anything else                   JSON echo of the request (method, target,
                                      headers, body length and sha256)
    Every response carries X-Backend: <name>.
    """

    def __init__(self, name="b1", tls_cert=None, tls_key=None, port=0, client_ca=None):
        self.name = name
        self.requests = []  # dicts: method, target, path, headers, body_len
        self.lock = threading.Lock()
        self.health_status = 200
        self.conns_accepted = 0
        self.open_conns = 0
        self.closed_conn_ids = set()  # connections that ended (peer closed or we did)
        self.gates = {}  # name -> threading.Event, see /chunked?gate=
        self.ctx = None
        if tls_cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(tls_cert, tls_key)
            if client_ca:  # mTLS: only clients with a certificate from client_ca
                self.ctx.verify_mode = ssl.CERT_REQUIRED
                self.ctx.load_verify_locations(client_ca)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.conns = set()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"{'https' if self.ctx else 'http'}://127.0.0.1:{self.port}"

    def gate(self, name):
        """The event a /chunked?gate=NAME response waits for after its first chunk."""
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def open_gate(self, name):
        self.gate(name).set()

    def hits(self, path=None):
        with self.lock:
            if path is None:
                return len([r for r in self.requests if r["path"] != "/health"])
            return len([r for r in self.requests if r["path"] == path])

    def last(self, path=None):
        with self.lock:
            for r in reversed(self.requests):
                if path is None or r["path"] == path:
                    return r
        return None

    def reset(self):
        with self.lock:
            self.requests.clear()

    def stop(self):
        self.running = False
        try:
            # shutdown() wakes the thread blocked in accept(); a bare close() would
            # leave the socket listening (and connections reset instead of refused).
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(2)
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def _accept_loop(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns_accepted += 1
                self.conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with self.lock:
            self.open_conns += 1
            conn_id = self.conns_accepted
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ctx:
                c = self.ctx.wrap_socket(c, server_side=True)
            c.settimeout(120)
            rd = Reader(c)
            while self.running:
                try:
                    start, headers = rd.read_head()
                except (ConnectionClosed, OSError, ValueError):
                    return
                if not self._handle(c, rd, start, headers, conn_id):
                    return
        except (OSError, ConnectionClosed, ValueError):
            pass
        finally:
            with self.lock:
                self.open_conns -= 1
                self.conns.discard(c)
                self.closed_conn_ids.add(conn_id)
            try:
                c.close()
            except OSError:
                pass

    @staticmethod
    def _hget(headers, name):
        name = name.lower()
        vals = [v for k, v in headers if k.lower() == name]
        return ", ".join(vals) if vals else None

    def _send_head(self, c, status, reason, headers):
        lines = [f"HTTP/1.1 {status} {reason}", f"X-Backend: {self.name}"]
        lines += [f"{k}: {v}" for k, v in headers]
        c.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _handle(self, c, rd, start, headers, conn_id=0):
        """Serves one request. Returns False to close the connection."""
        method, target, version = start.split(" ", 2)
        u = urllib.parse.urlsplit(target)
        path = u.path
        q = dict(urllib.parse.parse_qsl(u.query))
        conn_hdr = (self._hget(headers, "connection") or "").lower()
        keep = version == "HTTP/1.1" and "close" not in conn_hdr
        rec = {"method": method, "target": target, "path": path, "headers": headers,
               "body_len": 0, "time": time.time(), "conn": conn_id}
        peer = c.getpeercert() if isinstance(c, ssl.SSLSocket) else None
        if peer:  # the client certificate's CN (mTLS backends)
            rec["peer_cn"] = dict(x[0] for x in peer.get("subject", ())).get("commonName")

        if path in ("/ws", "/ws-badaccept") and \
                (self._hget(headers, "upgrade") or "").lower() == "websocket":
            with self.lock:
                self.requests.append(rec)
            return self._websocket(c, rd, headers, bad_accept=path == "/ws-badaccept")
        if path == "/switch":
            with self.lock:
                self.requests.append(rec)
            self._send_head(c, 101, "Switching Protocols",
                            [("Upgrade", self._hget(headers, "upgrade") or "h2c"),
                             ("Connection", "Upgrade")])
            return True  # the next "request" comes through the tunnel

        if (self._hget(headers, "expect") or "").lower() == "100-continue":
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "read_delay_ms" in q:  # a slow consumer: the proxy must hold back, not buffer
            time.sleep(int(q["read_delay_ms"]) / 1000.0)

        # Stream the request body into a hash; never buffer it whole.
        h = hashlib.sha256()
        n = 0
        te = self._hget(headers, "transfer-encoding")
        cl = self._hget(headers, "content-length")
        if te and "chunked" in te.lower():
            def sink(d):
                nonlocal n
                n += len(d)
                h.update(d)
            rd.read_chunked(sink)
        elif cl:
            left = int(cl)
            while left:
                d = rd.read_some(min(left, 262144))
                left -= len(d)
                n += len(d)
                h.update(d)
        rec["body_len"] = n
        rec["body_sha256"] = h.hexdigest()
        with self.lock:
            self.requests.append(rec)

        conn_out = [] if keep else [("Connection", "close")]
        if path == "/close":
            return False
        if path == "/slow":
            time.sleep(int(q.get("ms", "1000")) / 1000.0)
        if path == "/health":
            st = self.health_status
            body = b"ok\n" if st == 200 else b"unhealthy\n"
            self._send_head(c, st, "OK" if st == 200 else "Unavailable",
                            [("Content-Type", "text/plain"),
                             ("Content-Length", str(len(body)))] + conn_out)
            if method != "HEAD":
                c.sendall(body)
            return keep
        if path == "/status":
            code = int(q.get("code", "200"))
            hdrs = list(conn_out)
            if code in (204, 304):
                if code == 304:
                    hdrs.append(("ETag", '"v1"'))
                self._send_head(c, code, "No Body", hdrs)
                return keep
            body = f"status {code}\n".encode()
            self._send_head(c, code, "Status", hdrs + [("Content-Length", str(len(body))),
                                                      ("Content-Type", "text/plain")])
            if method != "HEAD":
                c.sendall(body)
            return keep
        if path == "/large":
            total = int(q.get("bytes", "1048576"))
            if q.get("chunked") == "1":
                self._send_head(c, 200, "OK", [("Content-Type", "application/octet-stream"),
                                               ("Transfer-Encoding", "chunked")] + conn_out)
                if method != "HEAD":
                    for chunk in pattern_chunks(total):
                        c.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    c.sendall(b"0\r\n\r\n")
            else:
                self._send_head(c, 200, "OK", [("Content-Type", "application/octet-stream"),
                                               ("Content-Length", str(total))] + conn_out)
                if method != "HEAD":
                    for chunk in pattern_chunks(total):
                        c.sendall(chunk)
            return keep
        if path == "/chunked":
            chunks = int(q.get("chunks", "5"))
            size = int(q.get("size", "100"))
            delay = int(q.get("delay_ms", "0")) / 1000.0
            self._send_head(c, 200, "OK", [("Content-Type", "text/plain"),
                                           ("Transfer-Encoding", "chunked")] + conn_out)
            gate = self.gate(q["gate"]) if "gate" in q else None
            if method != "HEAD":
                for i in range(chunks):
                    data = bytes([65 + i % 26]) * size
                    c.sendall(b"%x;ext=1\r\n" % size + data + b"\r\n")
                    if delay:
                        time.sleep(delay)
                    if gate and i == 0:
                        gate.wait(60)
                c.sendall(b"0\r\nX-Trailer: done\r\n\r\n")
            return keep
        if path == "/ambiguous":  # both framings: a desync attempt from the upstream side
            body = b"5\r\nhello\r\n0\r\n\r\n"
            self._send_head(c, 200, "OK", [("Content-Length", str(len(body))),
                                           ("Transfer-Encoding", "chunked")])
            c.sendall(body)
            return keep
        if path == "/garbage":  # a malformed response head
            c.sendall(b"HTTP/1.1 200 OK\r\nX-Backend: " + self.name.encode() +
                      b"\r\nBroken header line\r\nContent-Length: 2\r\n\r\nok")
            return keep
        if path == "/truncated":  # promises 1000 bytes, sends 100, closes
            self._send_head(c, 200, "OK", [("Content-Length", "1000")])
            c.sendall(b"t" * 100)
            return False
        if path == "/then-close":  # answers keep-alive, then drops the idle connection
            body = b"bye\n"
            self._send_head(c, 200, "OK", [("Content-Length", str(len(body)))])
            c.sendall(body)
            time.sleep(0.1)
            return False
        if path == "/eof":  # no framing: the body ends when the connection closes
            self._send_head(c, 200, "OK", [("Content-Type", "text/plain")])
            if method != "HEAD":
                c.sendall(b"until-eof " * int(q.get("n", "100")))
            return False
        if path == "/early":
            c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        extra = []
        if path == "/hop":
            extra = [("Connection", "X-Resp-Hop, keep-alive" if keep else "X-Resp-Hop, close"),
                     ("X-Resp-Hop", "secret"), ("Keep-Alive", "timeout=5"),
                     ("X-Resp-End", "kept")]
            conn_out = []
        body = json.dumps({"server": self.name, "method": method, "target": target,
                           "path": path, "version": version, "headers": headers,
                           "body_len": n, "body_sha256": rec["body_sha256"]}).encode()
        self._send_head(c, 200, "OK", [("Content-Type", "application/json"),
                                       ("Content-Length", str(len(body)))] + extra + conn_out)
        if method != "HEAD":
            c.sendall(body)
        return keep

    def _websocket(self, c, rd, headers, bad_accept=False):
        key = self._hget(headers, "sec-websocket-key") or ""
        accept = ws_accept(key + ("x" if bad_accept else ""))
        self._send_head(c, 101, "Switching Protocols",
                        [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                         ("Sec-WebSocket-Accept", accept)])
        while True:
            try:
                fin, op, payload = ws_read_frame(rd)
            except (ConnectionClosed, OSError):
                return False
            if op == 0x8:  # close: answer and end
                c.sendall(ws_frame(0x8, payload[:2], mask=False))
                return False
            if op == 0x9:
                c.sendall(ws_frame(0xA, payload, mask=False))
                continue
            c.sendall(ws_frame(op, payload, mask=False, fin=fin))


# ---------------------------------------------------------------- gatehouse process

class Gatehouse:
    """Runs the real binary with a generated config in its own temp dir."""

    def __init__(self, config, files=None, wait=True, check_admin=True, env=None):
        """config: dict (written as YAML) or str (written as is; then ports()
        cannot be derived, pass a dict when the test needs them). env: extra
        environment variables for the process."""
        self.dir = tempfile.mkdtemp(prefix="gh-it-")
        self.config_path = os.path.join(self.dir, "gatehouse.yaml")
        for name, content in (files or {}).items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(content)
        self.write_config(config)
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self._stderr = open(self.stderr_path, "wb")
        penv = dict(os.environ)
        penv.update(env or {})
        self.proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", self.config_path],
                                     stdout=self._stderr, stderr=self._stderr, cwd=self.dir,
                                     env=penv)
        self.config = config
        if wait:
            self.wait_ready(check_admin)

    def write_config(self, config):
        if isinstance(config, dict):
            config = with_public_urls(config)
        text = config if isinstance(config, str) else to_yaml(config)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    @property
    def pid(self):
        return self.proc.pid

    def ports(self):
        """Plain and TLS listener ports from the config dict, in order."""
        out = []
        for listener in self.config.get("listen", []):
            out.append(int(listener["address"].rsplit(":", 1)[1]))
        return out

    @property
    def port(self):
        return self.ports()[0]

    @property
    def admin_port(self):
        a = self.config.get("admin")
        if not a:
            return None
        return int(a["address"].rsplit(":", 1)[1])

    def wait_ready(self, check_admin=True):
        deadline = time.time() + START_TIMEOUT
        ports = self.ports()
        if check_admin and self.admin_port:
            ports = ports + [self.admin_port]
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gatehouse exited with {self.proc.returncode} during start:\n"
                                   + self.stderr())
            p = pending[0]
            try:
                s = socket.create_connection(("127.0.0.1", p), timeout=1)
                s.close()
                pending.pop(0)
                continue
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"gatehouse did not listen on {p} within {START_TIMEOUT}s:\n"
                                   + self.stderr())
            time.sleep(0.05)

    def stderr(self):
        try:
            self._stderr.flush()
        except (ValueError, OSError):
            pass
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def rss_kb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_ticks(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def stop(self, timeout=10):
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self._stderr.close()
        except OSError:
            pass
        return self.proc.returncode

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self):
        """stop() + cleanup(), then fails unless the shutdown was clean (exit 0, no
        sanitizer report)."""
        code = self.stop()
        err = self.stderr()
        shutil.rmtree(self.dir, ignore_errors=True)
        if code != 0 or "Sanitizer" in err or "runtime error:" in err:
            raise AssertionError(f"gatehouse exited with {code}:\n" + err[-4000:])


def with_public_urls(config):
    """Sign-in builds its redirect URIs from configuration, never from the Host
    header: a test config with identity providers gets each listener's own
    address as its public_url unless the listener names one. A listener with
    "public_url": None keeps none (tests of the refusal)."""
    if not config.get("identity_providers") or not isinstance(config.get("listen"), list):
        return config
    out = dict(config)
    out["listen"] = []
    for ls in config["listen"]:
        if isinstance(ls, dict) and "address" in ls:
            ls = dict(ls)
            if "public_url" not in ls:
                ls["public_url"] = ("https://" if ls.get("tls") else "http://") + ls["address"]
            elif ls["public_url"] is None:
                del ls["public_url"]
        out["listen"].append(ls)
    return out


# The head of a configuration serve would run with sign-in, for commands that load
# it as serve does (check, policy explain/diff): a listener, sessions and one
# identity provider (nothing is fetched while loading).
SIGNIN_CONFIG_HEAD = ("listen: [{address: 127.0.0.1:8080}]\n"
                      "state: {sqlite: gh.db}\n"
                      "identity_providers:\n"
                      "  - {id: corp, type: oidc, issuer: 'https://idp.example.com',\n"
                      "     client_id: gh, client_secret: s3cret}\n")


def basic_config(routes, listen=None, **extra):
    """A config dict with one plain listener on a free port, an admin listener and
    one worker. routes: list of route dicts."""
    cfg = {
        "listen": listen or [{"address": f"127.0.0.1:{free_port()}"}],
        "admin": {"address": f"127.0.0.1:{free_port()}"},
        "workers": 1,
        "access_log": "off",
        "routes": routes,
    }
    cfg.update(extra)
    return cfg


def route(name, servers, host=None, path_prefix=None, public=True, **upstream_extra):
    """A route dict; servers: list of Backend or URL strings. Data-plane tests use
    public routes (no sign-in)."""
    urls = [s.url if isinstance(s, Backend) else s for s in servers]
    r = {"name": name, "match": {}, "upstream": {"servers": urls}}
    if public:
        r["public"] = True
    if host:
        r["match"]["host"] = host
    if path_prefix:
        r["match"]["path_prefix"] = path_prefix
    if not r["match"]:
        del r["match"]
    r["upstream"].update(upstream_extra)
    return r


def dead_url():
    """An http:// URL on a port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def wait_until(pred, timeout=5.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def http_get(port, path, timeout=5.0):
    """GET on the admin listener; returns Response."""
    return request(port, "GET", path, host=f"127.0.0.1:{port}", timeout=timeout)


def read_jsonl(path):
    """Parsed JSON lines of a file (missing file: empty list). A partial last line
    (no newline yet) is ignored."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            out.append(json.loads(line))
    return out


class ProxyCase(unittest.TestCase):
    """Base class: setUpClass starts `nbackends` backends and one gatehouse with
    the dict from config(); tearDownClass stops everything."""
    nbackends = 1
    gh_env = None

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)])

    @classmethod
    def setUpClass(cls):
        cls.backends = [Backend(f"b{i + 1}") for i in range(cls.nbackends)]
        cls.backend = cls.backends[0] if cls.backends else None
        try:
            cls.gh = Gatehouse(cls.config(), env=cls.gh_env)
        except Exception:
            for b in cls.backends:
                b.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        code = cls.gh.stop()
        err = cls.gh.stderr()
        if os.environ.get("GH_IT_VERBOSE"):
            print(f"--- gatehouse stderr ({cls.__name__}, exit {code}):\n{err}")
        cls.gh.cleanup()
        for b in cls.backends:
            b.stop()
        # A clean SIGTERM shutdown exits 0; a crash or a sanitizer report at exit does not.
        if code != 0 or "Sanitizer" in err or "runtime error:" in err:
            raise AssertionError(f"gatehouse exited with {code} at the end of {cls.__name__}:\n"
                                 + err[-4000:])

    def assertAlive(self):
        """The proxy process is still running (did not crash on what the test sent)."""
        self.assertIsNone(self.gh.proc.poll(), "gatehouse exited:\n" + self.gh.stderr()[-3000:])


def wait_log_entry(path, pred, timeout=15.0):
    """The first access log entry (JSON line) matching pred, polling while the
    proxy flushes its buffer; None when none shows up within timeout."""
    def find():
        for e in read_jsonl(path):
            if pred(e):
                return e
        return None
    return wait_until(find, timeout, 0.1)
