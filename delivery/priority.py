"""CPU priority of the bulk lane: on a saturated machine, quiet customers' mail goes first.

The tier pools (bulk delivery of backlogs) run MAILQ_BULK_NICE nicer than the web processes and
the express lane (delivery/management/commands/run_worker.py). Half of a bulk delivery's CPU is
spent in PostgreSQL, by the backend serving the pool process, and a backend runs at the
server's priority: so a bulk pool process also lowers the priority of its own backend, when
PostgreSQL runs on this machine and the operating system allows it (the same user, or
CAP_SYS_NICE). Elsewhere (a remote database, another user) the backend keeps its priority and
this is a no-op; docs/fair-share.md says what that costs.

Batch acceptance (POST /v1/messages/batch) runs MAILQ_BATCH_NICE nicer, it and its backend, for
the length of the request (`lowered`): a burst arriving through the web processes then does not
compete with quiet customers' single sends on equal terms. That needs the right to give the
priority back afterwards (CAP_SYS_NICE, or an RLIMIT_NICE that allows it); without it the batch
runs at normal priority.

`lower_own` and `_lower_backend` only ever lower a priority; `lowered` restores what it lowered.
"""

import logging
import os
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

from django.db import DatabaseError
from django.db import connection as default_connection
from django.db.backends.signals import connection_created

log = logging.getLogger(__name__)


def lower_own(nice: int) -> None:
    """Make this process (and the pool processes it will fork) `nice` nicer."""
    if nice > 0:
        os.nice(nice)


def _lower_backend(sender, connection, **kwargs) -> None:
    """connection_created: give this connection's backend this process's nice value."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0 or connection.vendor != "postgresql":
        return
    pid = connection.connection.get_backend_pid()  # libpq knows it: no round trip
    try:
        # The pid is only ours to touch if it is a PostgreSQL process on this machine.
        if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
            return
        if os.getpriority(os.PRIO_PROCESS, pid) < nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except (OSError, ValueError) as exc:  # another machine, another user, gone
        log.debug("backend %s keeps its priority: %s", pid, exc)


connection_created.connect(_lower_backend, dispatch_uid="mailq-bulk-backend-priority")


_CAP_SYS_NICE = 23


@cache
def _may_raise_again(nice: int) -> tuple[bool, bool]:
    """(this thread may return to `nice`, a local backend may be returned to its nice).

    Raising a priority back takes CAP_SYS_NICE, or for one's own threads an RLIMIT_NICE soft
    limit of at least 20 - nice (setrlimit(2)). Another user's process (the postgres backend)
    takes the capability."""
    capable = False
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                capable = bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except OSError:
        pass
    return capable or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice, capable


def _local_backend(connection) -> int | None:
    """The pid of the connection's PostgreSQL backend, when it is a process on this machine."""
    if connection.vendor != "postgresql":
        return None
    try:
        connection.ensure_connection()  # the request is about to use it anyway
    except DatabaseError:
        return None  # the request meets the same error and answers it as usual
    pid = connection.connection.get_backend_pid()  # libpq knows it: no round trip
    try:
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres" else None
    except OSError:
        return None


@contextmanager
def lowered(nice: int, connection=default_connection) -> Iterator[None]:
    """Run the block `nice` nicer: this thread, and the local backend of its database
    connection; then give both their priority back. A no-op where it could not be given back."""
    tid = threading.get_native_id()
    own = os.getpriority(os.PRIO_PROCESS, tid)
    may_thread, may_backend = _may_raise_again(own)
    if nice <= 0 or not may_thread:
        yield
        return
    backend = _local_backend(connection) if may_backend else None
    before = os.getpriority(os.PRIO_PROCESS, backend) if backend else None
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(own + nice, 19))
        if backend:
            os.setpriority(os.PRIO_PROCESS, backend, min(before + nice, 19))
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, own)
        if backend:
            # OSError: the backend is gone (its connection broke during the block).
            with suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, backend, before)
