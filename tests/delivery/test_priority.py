"""Bulk pools run niced, and so do their PostgreSQL backends; batch acceptance runs niced for
its length (delivery/priority.py)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from delivery import priority

ROOT = Path(__file__).resolve().parents[2]

# A process that lowers its priority, as run_worker does for a tier pool, then connects.
_CHILD = """
import os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailq.settings")
django.setup()
from delivery import priority
priority.lower_own({nice})
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    pid = cursor.fetchone()[0]
print(pid, os.getpriority(os.PRIO_PROCESS, pid), flush=True)
"""


def _backend_is_ours() -> bool:
    """Whether this process may renice a backend of the test database (local, and root or
    the postgres user)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres" and (
            os.geteuid() in (0, Path(f"/proc/{pid}").stat().st_uid)
        )
    except OSError:
        return False


@pytest.mark.parametrize("nice", [7, 0])
def test_a_niced_process_lowers_its_database_backend_too(db, nice):
    if not _backend_is_ours():
        pytest.skip("PostgreSQL is not local, or its backends belong to another user")
    env = os.environ | {"DATABASE_URL": _database_url()}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(nice=nice)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid, backend_nice = (int(v) for v in done.stdout.split())
    # At normal priority the backend keeps the server's (0); niced, it follows the process.
    assert backend_nice == nice, f"backend {pid} runs at nice {backend_nice}"


def _database_url() -> str:
    """The test database (pytest-django's), for a child process."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


# --- batch acceptance runs lowered (priority.lowered) ----------------------------------------


def _nice_of(path: str) -> int:
    """The nice value in a /proc/.../stat file (field 19; the command may hold spaces)."""
    return int(Path(path).read_text().rsplit(")", 1)[1].split()[16])


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _restorable() -> None:
    if not all(priority._may_raise_again(0)) or not _backend_is_ours():
        pytest.skip("this process may not give a priority back (no CAP_SYS_NICE)")


def test_lowered_nices_this_thread_and_its_backend_then_gives_both_back(db):
    _restorable()
    tid, backend = threading.get_native_id(), _backend_pid()
    # Per thread: a thread that was already running keeps its priority (a new one would
    # inherit the lowered one, as it should).
    asked, other = threading.Event(), []

    def spy() -> None:
        asked.wait(10)
        other.append(os.getpriority(os.PRIO_PROCESS, 0))

    spying = threading.Thread(target=spy)
    spying.start()
    with priority.lowered(6):
        inside = os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(os.PRIO_PROCESS, backend)
        asked.set()
        spying.join()
    after = os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(os.PRIO_PROCESS, backend)
    assert inside == (6, 6)
    assert other == [0]
    assert after == (0, 0)


def test_lowered_gives_the_priority_back_when_the_block_raises(db):
    _restorable()
    backend = _backend_pid()
    with pytest.raises(RuntimeError), priority.lowered(6):
        raise RuntimeError("the request failed")
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0
    assert os.getpriority(os.PRIO_PROCESS, backend) == 0


def test_a_batch_is_accepted_at_the_batch_nice_and_a_single_send_is_not(alice, settings):
    """Watched from another thread while the request runs: the request's thread and its
    backend are niced during a batch, and back to 0 once it is answered."""
    _restorable()
    settings.MAILQ_BATCH_NICE = 9
    tid, backend = threading.get_native_id(), _backend_pid()
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add((_nice_of(f"/proc/self/task/{tid}/stat"), _nice_of(f"/proc/{backend}/stat")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        one = {"template": "welcome", "to": "ana@example.com", "data": {"name": "Ana"}}
        assert alice.client.post("/v1/messages", one, format="json").status_code == 202
        single = set(seen)
        batch = {"messages": [one] * 500}
        assert alice.client.post("/v1/messages/batch", batch, format="json").status_code == 202
    finally:
        stop.set()
        watcher.join()
    assert single == {(0, 0)}
    assert (9, 9) in seen
    assert os.getpriority(os.PRIO_PROCESS, tid) == 0
    assert os.getpriority(os.PRIO_PROCESS, backend) == 0
