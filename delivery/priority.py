"""CPU priority of the bulk lane: on a saturated machine, quiet customers' mail goes first.

The tier pools (bulk delivery of backlogs) run MAILQ_BULK_NICE nicer than the web processes and
the express lane (delivery/management/commands/run_worker.py). Half of a bulk delivery's CPU is
spent in PostgreSQL, by the backend serving the pool process, and a backend runs at the
server's priority: so a bulk pool process also lowers the priority of its own backend, when
PostgreSQL runs on this machine and the operating system allows it (the same user, or
CAP_SYS_NICE). Elsewhere (a remote database, another user) the backend keeps its priority and
this is a no-op; docs/fair-share.md says what that costs.

Only ever lowers a priority (a higher nice value), never raises one.
"""

import logging
import os
from pathlib import Path

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
