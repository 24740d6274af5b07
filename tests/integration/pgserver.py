"""A throwaway PostgreSQL 15 for the fleet tests: initdb + pg_ctl (Debian's
binaries under /usr/lib/postgresql/15/bin) in a temporary directory, run as an
unprivileged user (the current one, or "postgres" through runuser when the
tests run as root), listening on 127.0.0.1 on a free port only, with password
(SCRAM) authentication for the role "gatehouse". Python stdlib only."""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from harness import free_port

PG_BIN = os.environ.get("GH_PG_BIN", "/usr/lib/postgresql/15/bin")
PASSWORD = "fleet-test-pw-7"


def available():
    return os.path.exists(os.path.join(PG_BIN, "initdb")) and os.path.exists(
        os.path.join(PG_BIN, "psql"))


class PgServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gh-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.pwfile = os.path.join(self.dir, "pw")  # the password, for initdb and Gatehouse
        with open(self.pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chown(self.pwfile, pw.pw_uid, pw.pw_gid)
        os.chmod(self.pwfile, 0o600)
        self._run("initdb", "-D", self.data, "-U", "gatehouse", "--auth=scram-sha-256",
                  "--pwfile=" + self.pwfile, "-E", "UTF8", "--no-sync")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\nfsync = off\n")
        self.start()

    def _run(self, tool, *args, check=True):
        cmd = [os.path.join(PG_BIN, tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{tool} failed: {r.stdout}\n{r.stderr}")
        return r

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "start")

    def kill(self):
        """An immediate stop: no shutdown checkpoint, connections cut."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def _pids(self):
        """The postmaster and every process under it (backends, walwriter...)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            root = int(f.readline())
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        pids, todo = [], [root]
        while todo:
            p = todo.pop()
            pids.append(p)
            todo.extend(c for c, pp in parent.items() if pp == p)
        return pids

    def pause(self):
        """A stalled database: every server process stopped (SIGSTOP), its
        sockets still open: connections are accepted by the kernel and
        queries sent, but nothing ever answers."""
        self.paused = self._pids()
        for p in self.paused:
            os.kill(p, signal.SIGSTOP)

    def resume(self):
        for p in getattr(self, "paused", []):
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused = []

    def uri(self, db="postgres", **params):
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://gatehouse@127.0.0.1:{self.port}/{db}" + (f"?{q}" if q else "")

    def sql(self, query):
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-v",
                            "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                            "gatehouse", "-d", "postgres", "-c", query],
                           capture_output=True, text=True, timeout=30, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr}")
        return r.stdout.strip()

    def stop(self):
        self.resume()
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(os.path.join(self.dir, "log")) as f:
                return f.read()
        except OSError:
            return ""
