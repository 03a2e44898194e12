"""Benchmark plumbing: a throwaway mailq stack on loopback, CPU meters, load generators.

Everything runs against its own PostgreSQL database, RabbitMQ vhost and Redis db, so a dev stack
(`make run`) on the same machine is not disturbed. `Stack` starts processes in their own process
groups and stops exactly those (SIGTERM, then SIGKILL after a timeout).
"""

import base64
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
PG = "postgres://mailq:mailq@127.0.0.1:5432"
RMQ_API = "http://127.0.0.1:15672/api"
RMQ_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
TICK = os.sysconf("SC_CLK_TCK")


def ensure_tools(log) -> None:
    """The services (scripts/services.sh, idempotent) with smtp-sink, and wrk when we may install.

    wrk is optional (a Python load generator stands in), so failing to install it is no error.
    """
    env = os.environ | {"SERVICES_QUIET": "1"}
    services = [str(ROOT / "scripts" / "services.sh"), "--with-smtp-sink"]
    subprocess.run(["bash", *services], env=env, stdout=log, stderr=log, timeout=600, check=True)
    if shutil.which("wrk") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=60"]
    env["DEBIAN_FRONTEND"] = "noninteractive"
    for step in ([*apt, "install", "-y", "wrk"], [*apt, "update"], [*apt, "install", "-y", "wrk"]):
        done = subprocess.run(step, env=env, stdout=log, stderr=log, timeout=300, check=False)
        if step[-1] == "wrk" and done.returncode == 0:
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def rabbit_api(method: str, path: str, body: dict | None = None) -> dict | list | None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{RMQ_API}{path}", data=data, method=method)
    request.add_header("Authorization", RMQ_AUTH)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def reset_vhost(vhost: str) -> None:
    """Drop the vhost (and any queues left by an aborted run) and create it afresh for guest."""
    try:
        rabbit_api("DELETE", f"/vhosts/{vhost}")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    rabbit_api("PUT", f"/vhosts/{vhost}", {})
    rabbit_api(
        "PUT", f"/permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
    )


def queue_depth(vhost: str, queue: str) -> int | None:
    try:
        info = rabbit_api("GET", f"/queues/{vhost}/{queue}")
    except urllib.error.HTTPError:
        return None
    return info.get("messages") if isinstance(info, dict) else None


def stack_env(database: str, vhost: str, redis_db: int | str, providers: str, **extra: str) -> dict:
    """The environment of a bench stack: its own database, vhost and Redis db; task events and
    throttling off (each has a benchmark of its own; here they would only cap the load)."""
    return os.environ | {
        "DATABASE_URL": f"{PG}/{database}",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "MAILQ_PROVIDERS": providers,
        "MAILQ_TASK_EVENTS": "0",
        "MAILQ_THROTTLING": "0",
        "DJANGO_SETTINGS_MODULE": "mailq.settings",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


_CUSTOMERS = """
import json
from customers.models import Customer, Tier
from templates.models import EmailTemplate
tier = Tier.objects.get(name={tier!r})
keys = {{}}
for name in {names!r}:
    customer = Customer.objects.create(name=name, tier=tier)
    template = EmailTemplate.objects.create(customer=customer, slug="note")
    template.add_version("Note for {{{{ name }}}}", "<p>Hi {{{{ name }}}}</p>", "Hi {{{{ name }}}}")
    keys[name] = customer.issue_key()[1]
print(json.dumps(keys))
"""


def create_customers(env: dict[str, str], log, tier: str, names: list[str]) -> dict[str, str]:
    """Customers of `tier`, each with a `note` template ({{ name }}); returns name -> API key."""
    out = manage(env, log, "shell", "-c", _CUSTOMERS.format(tier=tier, names=names))
    return json.loads(out.strip().splitlines()[-1])


def reset_database(name: str, env: dict[str, str], log) -> None:
    """Drop and recreate the bench database (so runs do not grow it), then migrate it."""
    conn = psycopg2.connect(f"{PG}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    manage(env, log, "migrate", "--noinput", "-v", "0")


def manage(env: dict[str, str], log, *args: str) -> str:
    """Run a manage.py command to completion; return its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process (warm shutdown), then SIGKILL its whole group after `timeout`."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # The group was made for this process alone: whatever is left in it is ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # As `make run`: every process counts its metrics into one fresh directory (the cost
        # of metrics is part of what a benchmark measures).
        metrics_dir = self.log_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    def start(self, name: str, argv: list[str]) -> Proc:
        path = self.log_dir / f"{name}.log"
        with open(path, "ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals only it
            )
        proc = self.procs[name] = Proc(name, popen, path)
        return proc

    def start_sink(self, port: int) -> Proc:
        argv = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to run as root without -u
        proc = self.start("sink", [*argv, f"127.0.0.1:{port}", "1000"])
        self._wait_port(proc, port)
        return proc

    def start_web(self, port: int, workers: int, access_log: bool) -> Proc:
        argv = [str(Path(sys.executable).parent / "gunicorn"), "mailq.wsgi"]
        argv += ["-c", "python:mailq.gunicorn_conf"]
        argv += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
        # As in the Procfile (gthread, WEB_THREADS threads per process, default 1).
        argv += ["--worker-class", "gthread", "--threads", os.environ.get("WEB_THREADS", "1")]
        argv += ["--graceful-timeout", "20"] + (["--access-logfile", "-"] if access_log else [])
        proc = self.start("web", argv)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        if not wait_until(lambda: not proc.alive() or healthy(), 30, 0.2) or not proc.alive():
            raise RuntimeError(f"gunicorn did not come up; see {proc.log}")
        return proc

    def start_workers(self, pool: str, concurrency: int, loglevel: str) -> Proc:
        argv = [sys.executable, "manage.py", "run_worker", pool, "--loglevel", loglevel]
        return self.start("workers", [*argv, "--concurrency", str(concurrency)])

    def start_mailq(self, tier: str, sink_port: int, web_port: int) -> None:
        """What the Procfile runs for one tier, on loopback: smtp-sink (the provider), gunicorn
        (WEB_CONCURRENCY processes, 2 unless set, as in the Procfile), the tier's pool, the
        express lane, the maintenance worker and beat; then a few seconds for the workers to
        connect and declare their queues."""
        self.start_sink(sink_port)
        self.start_web(web_port, int(os.environ.get("WEB_CONCURRENCY", "2")), access_log=False)
        self.start_workers(tier, 0, "WARNING")
        for pool in ("express", "maintenance"):
            argv = [sys.executable, "manage.py", "run_worker", pool, "--loglevel", "WARNING"]
            self.start(pool, argv)
        beat = [sys.executable, "-m", "celery", "-A", "mailq", "beat", "--loglevel", "WARNING"]
        self.start("beat", [*beat, "--schedule", str(self.log_dir / "beat-schedule")])
        time.sleep(5)

    def sink_count(self) -> int:
        """Messages smtp-sink accepted: its -c counter writes "... mesg=N\\r" per message."""
        path = self.procs["sink"].log
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 80))
            tail = f.read().decode(errors="replace")
        marks = [part for part in tail.split("mesg=")[1:] if part.split("\r")[0].isdigit()]
        return int(marks[-1].split("\r")[0]) if marks else 0

    def _wait_port(self, proc: Proc, port: int) -> None:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        if not wait_until(lambda: not proc.alive() or listening(), 10) or not proc.alive():
            raise RuntimeError(f"{proc.name} did not listen on {port}; see {proc.log}")

    def stop_all(self) -> None:
        # Web first (no new work), then workers (warm shutdown finishes in-flight tasks).
        for name in ("web", "workers", "sink"):
            if name in self.procs:
                self.procs[name].stop()
        for proc in self.procs.values():
            proc.stop()


# --- CPU accounting -----------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str, int, int]]:
    """pid -> (ppid, comm, own CPU ticks, ticks of its reaped children) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        # utime + stime cover all threads; cutime + cstime hold children already reaped, so a
        # tree's total stays right when a pool process exits mid-phase.
        own, reaped = int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])
        table[int(entry)] = (int(rest[1]), comm, own, reaped)
    return table


def _tree(table: dict[int, tuple[int, str, int, int]], roots: set[int]) -> set[int]:
    """The pids of the process trees under `roots`."""
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    seen, stack = set(), [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children.get(pid, []))
    return seen


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _postgres_pids(table: dict[int, tuple[int, str, int, int]], database: str) -> set[int]:
    """The postmaster, the background processes and the live backends of `database`.

    Backend titles read "postgres: 15/main: USER DB HOST(PORT) STATE"; other databases' live
    backends (a concurrent test run) are left out. Backends that exited are in the postmaster's
    reaped-children time, whatever their database: a client that reconnects per task shows there.
    """
    pids = set()
    for pid, (ppid, comm, _, _) in table.items():
        if comm != "postgres":
            continue
        title = _cmdline(pid) if table.get(ppid, (0, ""))[1] == "postgres" else ""
        if not ("(" in title or "[local]" in title) or f" {database} " in title:
            pids.add(pid)
    return pids


def _machine_ticks(irq_only: bool = False) -> int:
    """Busy CPU ticks of the whole machine (all but idle and iowait), or its irq + softirq."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return fields[5] + fields[6] if irq_only else sum(fields) - fields[3] - fields[4]


def machine_busy(seconds: float = 1.0) -> float:
    """Share (0-1) of all cores busy over `seconds`: other load present before a run starts."""
    start, t0 = _machine_ticks(), time.monotonic()
    time.sleep(seconds)
    return (_machine_ticks() - start) / TICK / (time.monotonic() - t0) / (os.cpu_count() or 1)


def cpu_snapshot(stack: Stack, database: str) -> dict:
    """CPU seconds used so far by each process group (compare two snapshots for a phase).

    `machine` is the whole machine's busy time; what no group accounts for is other load (another
    test run) or kernel work (`irq`: softirq is where loopback TCP is processed). `procs` keeps
    every other process's CPU so that `top_other` can name the biggest ones.
    """
    table = _process_table()
    groups = {name: _tree(table, {p.pid}) for name, p in stack.procs.items() if p.alive()}
    groups["postgres"] = _postgres_pids(table, database)
    # RabbitMQ: beam.smp and its helpers (erl_child_setup, inet_gethost), all vhosts together.
    beams = {pid for pid, row in table.items() if row[1] == "beam.smp"}
    groups["rabbitmq"] = _tree(table, {pid for pid in beams if "rabbit boot" in _cmdline(pid)})
    seconds = {
        name: sum(table[pid][2] + table[pid][3] for pid in pids) / TICK
        for name, pids in groups.items()
    }
    # The load generator is this process (client threads) plus children it reaped (wrk).
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds["loadgen"] = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    seconds["machine"] = _machine_ticks() / TICK
    seconds["irq"] = _machine_ticks(irq_only=True) / TICK
    ours = set().union(*groups.values(), {os.getpid()})
    seconds["procs"] = {
        pid: (row[1], (row[2] + row[3]) / TICK) for pid, row in table.items() if pid not in ours
    }
    return seconds


def top_other(before: dict, after: dict, n: int = 3) -> list[tuple[str, float]]:
    """The processes outside our groups that used the most CPU between two snapshots."""
    used = {
        f"{comm}[{pid}]": s - before["procs"].get(pid, ("", 0.0))[1]
        for pid, (comm, s) in after["procs"].items()
    }
    top = sorted(used.items(), key=lambda kv: -kv[1])[:n]
    return [(name, round(s, 2)) for name, s in top if s >= 0.05]


# --- load generation ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Client:
    """HTTP client with one keep-alive connection per thread (reopened when the server closes)."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.local = port, threading.local()
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(self, path: str, body: bytes) -> tuple[int, dict | None, float]:
        """(status, JSON answer, seconds); status 0 when the connection failed."""
        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        t0 = time.perf_counter()
        for attempt in (1, 2):
            try:
                self.local.conn.request("POST", path, body, self.headers)
                response = self.local.conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection before reading the request
                # (it never saw it): reconnect and send it once more, as browsers do.
                self.local.conn.close()
                if attempt == 2:
                    return 0, None, time.perf_counter() - t0
            except (OSError, http.client.HTTPException):
                self.local.conn.close()
                return 0, None, time.perf_counter() - t0
        return response.status, json.loads(data or b"null"), time.perf_counter() - t0


def _run_summary(requests: int, seconds: float, errors: int, p50: float, p99: float) -> dict:
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "errors": errors,
        "req_per_s": round(requests / seconds, 1),
        "p50_ms": round(p50 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
    }


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [[%(body)s]]
%(headers)s
function done(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT %%d %%d %%.0f %%.0f %%d\\n", s.requests, s.duration,
    lat:percentile(50), lat:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def run_wrk(url: str, headers: dict, body: str, clients: int, seconds: float) -> dict:
    """POST `body` from `clients` connections for `seconds` with wrk (2 threads, C and LuaJIT)."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % {"body": body, "headers": lines})
    try:
        argv = f"wrk -t 2 -c {clients} -d {max(1, round(seconds))}s --timeout 10s -s {f.name} {url}"
        out = subprocess.run(argv.split(), capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    finally:
        os.unlink(f.name)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    requests, duration_us, p50, p99, errors = (int(float(v)) for v in line.split()[1:])
    return _run_summary(requests, duration_us / 1e6, errors, p50 / 1e6, p99 / 1e6)


def run_threads(client: Client, path: str, body: bytes, clients: int, seconds: float) -> dict:
    """The same with Python threads, when wrk is missing (the GIL caps it near 1 core)."""
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < deadline:
            status, _, took = client.post(path, body)
            latencies.append(took)  # list.append is atomic under the GIL
            errors[0] += status != 202

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    return _run_summary(len(latencies), took, errors[0], pct(latencies, 0.5), pct(latencies, 0.99))
