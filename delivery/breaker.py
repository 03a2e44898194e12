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

Cost: a healthy provider costs no Redis round trip per send. Each process keeps a view of its
breakers (closed with no failure in a row), read from Redis at most every
MAILQ_BREAKER_VIEW_SECONDS (1 s); while the view says healthy, a send calls the provider
directly, outside pybreaker's per-breaker lock (the express pool's threads send in parallel),
and only a temporary failure goes to Redis, through pybreaker, to be counted. Anything else (a
failure in a row, open, half-open) drops the view and sends through pybreaker, as before. The
price of the view: another process's failures reach this one up to 1 s late, so a success here
may not reset a count that started there within that second, and after the breaker opens each
process may try the provider once more before it sees it open.
"""

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

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
    """A Redis client that connects on first use and, after an error, fails at once
    (RedisError) for MAILQ_BREAKER_REDIS_RETRY_SECONDS."""

    def __init__(self, connect: Callable[[], redis.Redis]) -> None:
        self._connect = connect
        self._client: redis.Redis | None = None
        self.down_until = 0.0

    def paused(self) -> bool:
        return time.monotonic() < self.down_until

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.paused():
                raise RedisError("paused after an error")
            try:
                if self._client is None:
                    self._client = self._connect()
                return getattr(self._client, name)(*args, **kwargs)
            except RedisError as exc:
                pause = settings.MAILQ_BREAKER_REDIS_RETRY_SECONDS
                self.down_until = time.monotonic() + pause
                log.warning("Redis unavailable (%s): breakers fail open for %.0f s", exc, pause)
                raise

        setattr(self, name, call)  # found directly next time, not through __getattr__
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


class _Breaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker, with one probe at a time across all workers.

    pybreaker lets every call through while half-open, so after each cool-down every worker
    would pay a still-failing provider's timeout at once. Here the probe is whoever sets the
    probe key first; the others keep skipping the provider until its verdict. The key expires
    after one cool-down, so a prober that died does not keep the provider skipped for ever.
    """

    def __init__(self, probe_key: str, client: "_FailFast", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._probe_key = probe_key
        self._client = client
        self._probing = False
        self._view_keys = _state_keys(kwargs["name"])
        self._view: tuple[float, bool] = (0.0, False)  # (read at, healthy)

    def healthy(self) -> bool:
        """Closed with no temporary failure in a row, as Redis said at most
        MAILQ_BREAKER_VIEW_SECONDS ago (one MGET when the view is older)."""
        read_at, healthy = self._view
        now = time.monotonic()
        if now - read_at < settings.MAILQ_BREAKER_VIEW_SECONDS:
            return healthy
        state, failures = self._client.mget(self._view_keys)
        healthy = (state is None or state.decode() == CLOSED) and int(failures or 0) == 0
        self._view = (now, healthy)
        return healthy

    def forget(self) -> None:
        """Drop the view: the next send reads Redis again."""
        self._view = (0.0, False)

    def count_failure(self, exc: TemporaryError) -> None:
        """Count a temporary failure of a send made outside the breaker (it may trip it)."""
        self.forget()
        with self._lock:
            state = self.state
            if state.name != CLOSED:
                return  # another process already opened it: nothing to count
            with contextlib.suppress(TemporaryError, pybreaker.CircuitBreakerError):
                state.call(_raise, exc)

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            state = self.state  # the one Redis read of a send through a closed breaker
            if state.name == CLOSED or self._probing:
                return state.call(func, *args, **kwargs)
            if not self._claim_probe(state.name):
                raise pybreaker.CircuitBreakerError(f"{self.name}: open")
            self._probing = True  # pybreaker calls back into call() as it half-opens
            try:
                return state.call(func, *args, **kwargs)
            finally:
                self._probing = False
                with contextlib.suppress(RedisError):
                    self._client.delete(self._probe_key)  # the verdict is in

    def _claim_probe(self, state: str) -> bool:
        opened_at = self._state_storage.opened_at if state == OPEN else None
        # pybreaker stores the opening time in whole seconds (rounded down): the breaker really
        # opened up to a second later, so wait that second too rather than probe early.
        cool_down = self.reset_timeout + 1
        if opened_at and (datetime.now(UTC) - opened_at).total_seconds() < cool_down:
            return False  # cooling down
        px = int(self.reset_timeout * 1000)
        return bool(self._client.set(self._probe_key, b"1", nx=True, px=px))


_redis: tuple[int, _FailFast] | None = None
_breakers: dict[tuple[str, int, float], _Breaker] = {}


def _client() -> _FailFast:
    """This process's Redis client: one connection, no pool to check out of on every command
    (that costs half a round trip), made again after a fork (never share a socket)."""
    global _redis
    if _redis is None or _redis[0] != os.getpid():
        connect = functools.partial(
            redis.Redis.from_url,
            settings.REDIS_URL,
            socket_timeout=settings.MAILQ_REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.MAILQ_REDIS_TIMEOUT_SECONDS,
            single_connection_client=True,
            retry=Retry(NoBackoff(), 0),  # no retries: an error means fail open, at once
        )
        _redis = (os.getpid(), _FailFast(connect))
        _breakers.clear()  # they hold the old client
    return _redis[1]


def _namespace(name: str) -> str:
    return f"mailq:breaker:{name}"


def _only_temporary(exc: BaseException) -> bool:
    """pybreaker exclusion: True for what must not count as a provider failure."""
    return not isinstance(exc, TemporaryError)


def _breaker(name: str) -> _Breaker:
    """This process's handle on the provider's shared breaker."""
    client = _client()
    key = (name, settings.MAILQ_BREAKER_FAIL_MAX, settings.MAILQ_BREAKER_RESET_SECONDS)
    found = _breakers.get(key)
    if found is None:
        found = _breakers[key] = _Breaker(
            probe_key=f"{_namespace(name)}:probe",
            client=client,
            fail_max=key[1],
            reset_timeout=key[2],
            exclude=[_only_temporary],
            state_storage=_Storage(CLOSED, client, namespace=_namespace(name)),
            name=name,
            # The failure that trips the breaker propagates as itself: it is a real attempt.
            throw_new_error_on_trip=False,
        )
    return found


def _raise(exc: BaseException) -> None:
    raise exc


def _state_keys(name: str) -> list[str]:
    return [f"{_namespace(name)}:pybreaker:{key}" for key in ("state", "fail_counter")]


def send(provider: Provider, email: Email) -> SendResult:
    """`provider.send(email)` through its breaker; CircuitOpen if the breaker is open."""
    if _client().paused():
        return provider.send(email)  # fail open: no Redis, no breaker
    try:
        breaker = _breaker(provider.name)
        healthy = breaker.healthy()
    except RedisError:
        return provider.send(email)  # _FailFast logged it and pauses Redis; fail open
    if healthy:
        try:
            return provider.send(email)
        except TemporaryError as exc:
            with contextlib.suppress(RedisError):
                breaker.count_failure(exc)
            raise
    try:
        return breaker.call(provider.send, email)
    except pybreaker.CircuitBreakerError as exc:
        raise CircuitOpen(provider.name) from exc
    except RedisError:
        # Only the probe claim lets one out (pybreaker absorbs its own), and only before the
        # provider is called: _FailFast logged it and pauses Redis; fail open.
        return provider.send(email)
    finally:
        breaker.forget()


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
    keys = [key for name in names for key in _state_keys(name)]
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
