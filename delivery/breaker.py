"""A circuit breaker per provider, its state in Redis so that every worker process agrees.

pybreaker keeps the state machine; its CircuitRedisStorage keeps the state, the consecutive
failure count and the opening time under `mailq:breaker:<provider name>:pybreaker:*`::

    closed --MAILQ_BREAKER_FAIL_MAX temporary failures in a row--> open
    open --MAILQ_BREAKER_RESET_SECONDS later, the next send is a probe--> half-open
    half-open --the probe succeeds--> closed;  --it fails--> open again

Only temporary errors (timeouts, connection failures, 5xx, 429, SMTP 4xx) count. A permanent
error (bad address, content refused) is the message's fault: it counts as an answer, so it
never trips a breaker. An open breaker raises CircuitOpen without calling the provider, so
sending.py fails over to the next one at once instead of paying a timeout per message.

**Redis down: fail open.** Breakers protect latency, not correctness: without Redis every
breaker is treated as closed (each provider is tried, as with no breaker), a warning is
logged, and this process leaves Redis alone for MAILQ_BREAKER_REDIS_RETRY_SECONDS, so an
outage costs one Redis timeout per process per interval, not several per message.

After a cool-down one send across all workers probes the provider (a Redis SET NX decides
which); the others keep skipping it until the probe's verdict.

Cost: a send through a closed breaker makes three Redis round trips (the state, read here and
again by pybreaker; the failure count reset). pybreaker holds a per-breaker lock during the
call; a Celery prefork process sends one message at a time, so it never waits on it.
"""

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis
from django.conf import settings
from redis.exceptions import RedisError

from delivery.providers import build_chain
from delivery.providers.base import Email, Provider, SendResult, TemporaryError

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


class CircuitOpen(Exception):
    """The provider's breaker is open: it was not called."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: circuit open")
        self.message = str(self)


class _FailFast:
    """The Redis client, failing at once (RedisError) for a while after an error."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.down_until = 0.0

    def paused(self) -> bool:
        return time.monotonic() < self.down_until

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.paused():
                raise RedisError("paused after an error")
            try:
                return method(*args, **kwargs)
            except RedisError as exc:
                pause = settings.MAILQ_BREAKER_REDIS_RETRY_SECONDS
                self.down_until = time.monotonic() + pause
                log.warning("Redis unavailable (%s): breakers fail open for %.0f s", exc, pause)
                raise

        return call


class _Storage(pybreaker.CircuitRedisStorage):
    # pybreaker logs a traceback for every Redis error it absorbs; _FailFast already logged
    # the outage once, and a traceback per message would bury it.
    logger = logging.getLogger(f"{__name__}.storage")
    logger.setLevel(logging.CRITICAL)

    def _initialize_redis_state(self, state: str) -> None:
        # The only Redis write pybreaker does not guard: absorb it like the others.
        with contextlib.suppress(RedisError):
            super()._initialize_redis_state(state)


_redis: _FailFast | None = None

@dataclass(frozen=True)
class _Handle:
    breaker: pybreaker.CircuitBreaker
    storage: _Storage
    probe_key: str


_handles: dict[tuple[str, int, float], _Handle] = {}


def _client() -> _FailFast:
    global _redis
    if _redis is None:
        # redis-py's pool notices a fork and reconnects, so one client serves every process.
        _redis = _FailFast(
            redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=settings.MAILQ_REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=settings.MAILQ_REDIS_TIMEOUT_SECONDS,
            )
        )
    return _redis


def _namespace(name: str) -> str:
    return f"mailq:breaker:{name}"


def _only_temporary(exc: BaseException) -> bool:
    """pybreaker exclusion: True for what must not count as a provider failure."""
    return not isinstance(exc, TemporaryError)


def _handle(name: str) -> _Handle:
    """This process's handle on the provider's shared breaker."""
    key = (name, settings.MAILQ_BREAKER_FAIL_MAX, settings.MAILQ_BREAKER_RESET_SECONDS)
    found = _handles.get(key)
    if found is None:
        storage = _Storage(CLOSED, _client(), namespace=_namespace(name))
        breaker = pybreaker.CircuitBreaker(
            fail_max=key[1],
            reset_timeout=key[2],
            exclude=[_only_temporary],
            state_storage=storage,
            name=name,
            # The failure that trips the breaker propagates as itself: it is a real attempt.
            throw_new_error_on_trip=False,
        )
        found = _handles[key] = _Handle(breaker, storage, f"{_namespace(name)}:probe")
    return found


def _may_send(handle: _Handle) -> bool | None:
    """None: closed, send. True: this send is the probe. False: skip the provider.

    pybreaker lets every call through while half-open, so after each cool-down every worker
    would pay a still-failing provider's timeout at once. One probe at a time across all
    workers instead: whoever sets the probe key first. The key expires after one cool-down,
    so a prober that died does not keep the provider skipped for ever.
    """
    state = handle.breaker.current_state
    if state == CLOSED:
        return None
    reset = handle.breaker.reset_timeout
    opened_at = handle.storage.opened_at
    if state == OPEN and opened_at and (datetime.now(UTC) - opened_at).total_seconds() < reset:
        return False  # cooling down
    return bool(_client().set(handle.probe_key, b"1", nx=True, px=int(reset * 1000)))


def send(provider: Provider, email: Email) -> SendResult:
    """`provider.send(email)` through its breaker; CircuitOpen if the breaker is open."""
    client = _client()
    if client.paused():
        return provider.send(email)  # fail open: no Redis, no breaker
    try:
        handle = _handle(provider.name)
        probe = _may_send(handle)
    except RedisError:
        return provider.send(email)  # _FailFast logged it and pauses Redis for a while
    if probe is False:
        raise CircuitOpen(provider.name)
    try:
        return handle.breaker.call(provider.send, email)
    except pybreaker.CircuitBreakerError as exc:
        raise CircuitOpen(provider.name) from exc
    finally:
        if probe:
            with contextlib.suppress(RedisError):
                client.delete(handle.probe_key)  # the verdict is in: the next cool-down's turn


@dataclass(frozen=True)
class BreakerState:
    name: str
    state: str  # closed | open | half-open
    failures: int  # consecutive temporary failures counted so far
    opened_at: datetime | None


@functools.cache
def _names(urls: tuple[str, ...]) -> list[str]:
    return [provider.name for provider in build_chain(list(urls))]  # builds, opens nothing


def snapshot(names: list[str] | None = None) -> list[BreakerState]:
    """The breakers of these providers (default: MAILQ_PROVIDERS) as Redis has them; closed
    when Redis cannot say, since that is how the workers then act."""
    names = names if names is not None else _names(tuple(settings.MAILQ_PROVIDERS))
    client = _client()
    keys = [f"{_namespace(n)}:pybreaker:{k}" for n in names for k in ("state", "fail_counter")]
    keys += [f"{_namespace(n)}:pybreaker:opened_at" for n in names]
    try:
        values = client.mget(keys) if names and not client.paused() else [None] * len(keys)
    except RedisError:
        values = [None] * len(keys)
    result = []
    for i, name in enumerate(names):
        state, failures = values[2 * i], values[2 * i + 1]
        opened = values[2 * len(names) + i]
        state = state.decode() if state else CLOSED
        result.append(
            BreakerState(
                name=name,
                state=state,
                failures=int(failures or 0),
                # pybreaker leaves the last opening time behind when it closes.
                opened_at=datetime.fromtimestamp(int(opened), UTC)
                if opened and state != CLOSED
                else None,
            )
        )
    return result


def states(names: list[str] | None = None) -> dict[str, str]:
    """Provider name -> "closed" | "open" | "half-open", for the admin and metrics."""
    return {s.name: s.state for s in snapshot(names)}
