"""A real child process for tests: its own process group, its output kept, stopped for sure.

Worker pools, gunicorn and Flower are started the same way: in a session of their own (so a
stop reaches their children and nothing else), with stdout and stderr read by a thread (so a
chatty process never blocks on a full pipe, and a failing test can show what it printed).
"""

import os
import signal
import subprocess
import threading


class ChildProcess:
    """`argv` running with `env`; `ready` is set once a line of its output contains `marker`."""

    def __init__(self, argv: list[str], env: dict[str, str], marker: str | None = None) -> None:
        self.output: list[str] = []
        self.ready = threading.Event()
        self.marker = marker
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if self.marker and self.marker in line:
                self.ready.set()

    def tail(self, lines: int = 50) -> str:
        return "".join(self.output[-lines:])

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def terminate(self) -> None:
        """SIGTERM (a warm shutdown for Celery and gunicorn); `wait` for it to end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> None:
        """Wait for the process to end; past `timeout`, SIGKILL its whole process group."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float = 20.0) -> None:
        self.terminate()
        self.wait(timeout)
