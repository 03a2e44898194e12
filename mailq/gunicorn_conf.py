"""gunicorn settings that belong in code (`gunicorn -c python:mailq.gunicorn_conf`).

The command line in the Procfile keeps the tunables (bind, workers, threads); this module
holds the hooks. It runs in the master before Django is set up, so it imports no app code.
"""

import os

from prometheus_client import multiprocess


def child_exit(server, worker) -> None:
    """A web worker process ended: prometheus-client's multiprocess bookkeeping (as
    delivery.metrics.process_exited does for Celery pool processes)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
