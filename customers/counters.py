"""Redis access for the throttle, quotas and abuse counters: one place for that I/O.

Every call goes through `call`, which fails open: when Redis errors, it logs, answers None and
skips Redis in this process for MAILQ_THROTTLE_RETRY_SECONDS, so an outage costs one timeout
per process per interval instead of one per request (customers/throttling.py says why open).
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import redis
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import NoScriptError, RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Link:
    """The Redis client of the rate-limit cache, its key prefix, and the breaker's state."""

    client: redis.Redis
    prefix: str  # the cache's KEY_PREFIX and version, then "thr:"
    down_until: float = 0.0
    shas: dict[str, str] = field(default_factory=dict, repr=False)
    local: threading.local = field(default_factory=threading.local, repr=False)

    def run(self, script: str, keys: list[str], args: list[str]) -> Any:
        """Run a Lua script by its SHA, loading it into Redis first when Redis lacks it.

        This runs on every API request, so it uses a connection of its own per thread rather
        than the pool: checking a connection out of the pool (a lock, a poll() for stale data,
        instrumentation) costs a third of the call. Nothing is retried: `call` fails open.
        """
        sha = self.shas.get(script)
        if sha is None:
            sha = self.shas[script] = self.client.script_load(script)
        try:
            return self._evalsha(sha, keys, args)
        except NoScriptError:  # Redis restarted or SCRIPT FLUSH: load it again
            self.shas[script] = self.client.script_load(script)
            return self._evalsha(self.shas[script], keys, args)

    def _evalsha(self, sha: str, keys: list[str], args: list[str]) -> Any:
        connection = getattr(self.local, "connection", None)
        if connection is None or self.local.pid != os.getpid():  # never share one over a fork
            pool = self.client.connection_pool  # same URL, timeouts and parser as the cache
            connection = self.local.connection = pool.connection_class(**pool.connection_kwargs)
            self.local.pid = os.getpid()
        try:
            connection.send_command("EVALSHA", sha, len(keys), *keys, *args)
            return connection.read_response()
        except NoScriptError:
            raise  # an answer: the connection is fine
        except BaseException:
            connection.disconnect()  # half a command or half an answer: reconnect next time
            raise


# Keyed by the cache object, so a test that points the cache elsewhere gets a fresh link
# (and a fresh breaker) while the real one keeps its state.
_links: "WeakKeyDictionary[BaseCache, Link]" = WeakKeyDictionary()


def link() -> Link:
    backend = caches[settings.RATELIMIT_USE_CACHE]
    found = _links.get(backend)
    if found is None:
        if not isinstance(backend, RedisCache):
            raise ImproperlyConfigured("Throttling needs a RedisCache (RATELIMIT_USE_CACHE).")
        # Django's RedisCache keeps its connection pool behind _cache; sharing it keeps one
        # pool (and one set of timeouts) per process for the cache and the throttle.
        found = _links[backend] = Link(
            client=backend._cache.get_client(write=True), prefix=backend.make_key("thr:")
        )
    return found


def call(action: Callable[[Link], T], current: Link | None = None) -> T | None:
    """Run `action` against Redis; None (fail open) if Redis is failing or recently failed."""
    current = current or link()
    if time.monotonic() < current.down_until:
        return None
    try:
        return action(current)
    except RedisError as exc:
        pause = settings.MAILQ_THROTTLE_RETRY_SECONDS
        current.down_until = time.monotonic() + pause
        log.warning("Redis unavailable (%s): throttling fails open for %.0f s", exc, pause)
        return None
