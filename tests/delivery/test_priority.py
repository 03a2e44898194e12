"""Bulk pools run niced, and so do their PostgreSQL backends (delivery/priority.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import test_database_url

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
    env = os.environ | {"DATABASE_URL": test_database_url()}
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
