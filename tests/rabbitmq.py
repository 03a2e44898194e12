"""A private RabbitMQ node for the tests that stop or restart the broker.

The shared RabbitMQ (127.0.0.1:5672) is never touched: this node has its own name, ports,
data and logs in a temporary directory, no plugins (so no management listener), and ignores
the machine's /etc/rabbitmq files. It is stopped at the end of the test, even on failure.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from kombu import Connection

SERVER = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin:/usr/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRabbitMQ:
    """`start`, `stop`, `restart` one RabbitMQ node on loopback; `url` is its default vhost."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port, self.dist_port = _free_port(), _free_port()
        self.name = f"mailqtest{os.getpid()}x{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen | None = None
        self.queue_type = "classic"  # of the queues the test declares on it
        self.crash = False  # how the test restarts it
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (base / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, timeout: float = 40.0) -> None:
        assert SERVER, "rabbitmq-server is not installed"
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [SERVER], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited:\n{self.output()}")
            try:
                with Connection(self.url, connect_timeout=1) as conn:
                    conn.connect()
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rabbitmq-server did not start in {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM: RabbitMQ flushes its queues to disk), then SIGKILL."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            self.proc.poll()  # reap the script so it does not linger as a zombie
            time.sleep(0.1)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def restart(self, crash: bool = False) -> None:
        """Stop and start again on the same data; `crash`: SIGKILL, as a power cut would."""
        if crash and self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)
        self.stop()
        self.start()

    def queue_types(self) -> dict[str, str]:
        """Queue name -> type (classic, quorum), as the node itself reports them."""
        ctl = str(Path(SERVER).with_name("rabbitmqctl"))
        out = subprocess.run(
            [ctl, "-n", self.name, "list_queues", "-q", "name", "type"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        rows = [line.split("\t") for line in out.stdout.splitlines()[1:]]
        return {row[0]: row[1] for row in rows if len(row) == 2}

    def output(self) -> str:
        path = self.base / "server.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Only zombies left (the script, not yet reaped) count as gone.
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    for pid in out.stdout.split():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            return True
    return False
