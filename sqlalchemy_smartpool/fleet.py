"""Fleet budget: pools in many processes share one ceiling of server connections.

A pool with ``budget=N`` takes a *lease* from a shared store (Redis, in
:mod:`.fleet_redis`) before it opens a physical connection and gives it back
when it closes one; checkouts of open connections never touch the store.
This module is the policy, pure Python with no Redis import:

* :func:`fair_shares` -- the max-min fair split of the budget over the live
  holders (each first gets its floor, ``min_size``, then the rest is filled
  level by level up to each holder's demand). The store runs the same
  computation inside its script; a test holds the two to each other.
* :class:`FleetBudget` -- one pool's side: its holder id, the leases (fencing
  tokens) of its connections, its share, when its leases stop being trusted
  (``lease_until``, on the local monotonic clock), and the policy for a store
  that cannot be reached.

Time for expiry comes from the store's clock only (Redis ``TIME`` inside the
script): a holder's leases expire ``ttl`` after its last renewal *as the store
sees it*, so hosts' clocks never meet. Locally a pool trusts its leases until
``ttl`` after it *sent* its last successful renewal -- an earlier instant than
the store's expiry, since the send came first -- and checks that bound
(one float comparison) before handing out a connection: a process frozen past
its TTL (SIGSTOP, a long GC pause) re-syncs before using a lease it may have
lost, and closes every connection whose lease is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from . import logs
from .errors import describe_error

logger = logging.getLogger(logs.ENGINE_LOGGER)

#: What a pool does while the store cannot be reached (``budget_on_redis_down``):
#: ``share``: keep to its last fair share (above it, connections close as they come back);
#: ``held``: keep what it holds, open nothing new; ``max``: ignore the budget (up to ``max_size``).
DownPolicy = Literal["share", "held", "max"]
DOWN_POLICIES: tuple[str, ...] = get_args(DownPolicy)

#: Slot.token values besides a real (positive) lease token
UNLEASED = 0  # opened while the store was down: it gets a lease when the store is back
FENCED = -1  # its lease was lost: closed now if idle, when it comes back if in use

#: the part of the TTL a pool waits between renewals, and the longest wait
RENEW_FRACTION = 0.25
RENEW_MAX = 1.0
#: a denied connect asks again after about this long while callers wait (jittered)
RETRY_DENIED = 0.05
RETRY_DENIED_MAX = 0.4
#: a lease goes back this long after its connection closed (the server's backend outlives the
#: client's close by a few ms, more on a loaded host); releases in that window go in one call
RELEASE_GRACE = 0.25


class StoreDown(Exception):
    """The store could not be reached or did not answer in time."""


@dataclass(frozen=True)
class Answer:
    """The store's reply to one acquire or sync.

    ``share``: this holder's fair share now; ``keep``: how many connections it
    may keep when others wait for theirs (-1: no limit); ``total``: leases out
    over the whole fleet; ``token``: the granted lease (acquire; 0 = denied);
    ``lost``: tokens the store no longer knows (sync); ``granted``: new tokens
    for connections that had none (sync); ``alive``: False when the holder had
    expired (it re-registered and every lease it had is in ``lost``);
    ``stale``: an acquire refused because the holder had expired -- sync first; ``holders``:
    live holders of the target.
    """

    share: int
    keep: int = -1
    total: int = 0
    token: int = 0
    lost: tuple[int, ...] = ()
    granted: tuple[int, ...] = ()
    alive: bool = True
    stale: bool = False
    holders: int = 0


class LeaseStore(Protocol):
    """Where the leases live (:class:`.fleet_redis.RedisLeaseStore`). Every call is one round
    trip and raises :class:`StoreDown` when the store is unreachable."""

    calls: int

    def acquire(self, holder: str, *, held: int, floor: int, demand: int) -> Answer: ...

    def sync(
        self, holder: str, *, tokens: Sequence[int], unleased: int, floor: int, demand: int
    ) -> Answer: ...

    def release(self, holder: str, tokens: Sequence[int]) -> None: ...

    def leave(self, holder: str) -> None: ...

    def close(self) -> None: ...


# -- the policy ----------------------------------------------------------------------------


def water_fill(avail: int, caps: Mapping[str, int]) -> dict[str, int]:
    """Max-min fair integer split of ``avail`` over ``caps``: nobody gets more than its cap, and
    nobody gets less than an equal part while others get more. Ties by holder id, so every
    caller (and the store's script) computes the same split."""
    out: dict[str, int] = {}
    left = len(caps)
    for holder in sorted(caps, key=lambda h: (caps[h], h)):
        give = min(caps[holder], avail // left) if left else 0
        out[holder] = give
        avail -= give
        left -= 1
    return out


def fair_shares(budget: int, wants: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Each holder's share of ``budget``; ``wants`` maps holder -> (floor, demand), floor <= demand.

    Floors (``min_size``) first, as far as the budget allows; what is left goes
    to demand above the floors, level by level. The sum never exceeds the budget.
    """
    floors = water_fill(budget, {h: min(f, d) for h, (f, d) in wants.items()})
    rest = budget - sum(floors.values())
    extra = water_fill(rest, {h: max(d - floors[h], 0) for h, (f, d) in wants.items()})
    return {h: floors[h] + extra[h] for h in wants}


def may_grant(budget: int, total: int, held: int, share: int, unmet_others: int) -> bool:
    """Grant one more lease? Within the budget, and either under the holder's own share or with
    room left beyond what the other holders lack of theirs (no first-come hoarding)."""
    return total < budget and (held < share or total + unmet_others < budget)


def keep_limit(held: int, share: int, unmet_others: int, free: int) -> int:
    """How many connections a holder above its share keeps while others lack theirs (-1: all)."""
    need = max(unmet_others - free, 0)
    if held <= share or need == 0:
        return -1
    return held - min(held - share, need)


# -- one pool's side -----------------------------------------------------------------------


@dataclass
class FleetStatus:
    """A snapshot for stats, health and tests (``pool.fleet_status()``)."""

    budget: int
    target: str
    holder: str
    share: int
    keep: int
    leases: int
    unleased: int
    fenced: int
    fleet_total: int
    holders: int
    store_up: bool
    acquires: int
    denied: int
    syncs: int
    lost: int
    store_calls: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


def new_holder_id() -> str:
    """Unique per process incarnation: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(40):010x}"


class FleetBudget:
    """One pool's lease bookkeeping and policy; the engine calls it, never the hot path.

    Thread-safe: its own lock guards its counters; a sync is single-flight
    (callers that find one running wait for its result instead of sending theirs).
    """

    def __init__(
        self,
        *,
        budget: int,
        ttl: float,
        on_down: str,
        min_size: int,
        max_size: int,
        store_factory: Callable[[], LeaseStore],
        target: Callable[[], str],
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.budget = budget
        self.ttl = ttl
        self.on_down = on_down
        self.min_size = min_size
        self.max_size = max_size
        self._store_factory = store_factory
        self._target_of = target
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._store: LeaseStore | None = None
        self.holder = new_holder_id()
        #: the local instant until which this pool's leases are trusted (inf: no lease to check)
        self.lease_until = float("inf")
        self.share = min(min_size, budget)  # before the store has answered: the floor
        self.keep = -1
        self.fleet_total = 0
        self.holders = 1
        self.store_up = True
        self.next_sync = float("-inf")
        self._peak = 0
        self._releases: list[int] = []
        self.acquires = self.denied = self.syncs = self.lost = self.fenced = 0
        self._was_down_logged = False

    # -- the store ------------------------------------------------------------------

    @property
    def target(self) -> str:
        return self._target_of()

    def _get_store(self) -> LeaseStore:
        store = self._store
        if store is None:
            store = self._store = self._store_factory()
        return store

    @property
    def store_calls(self) -> int:
        return self._store.calls if self._store is not None else 0

    def demand(self, busy: int) -> int:
        """What this pool asks for: its busiest moment since it last told the store."""
        peak = max(self._peak, busy)
        return max(self.floor, min(self.max_size, peak))

    @property
    def floor(self) -> int:
        return min(self.min_size, self.max_size)

    def sample(self, busy: int) -> None:
        """Note the pool's current need (in use + waiting), at each housekeeping tick."""
        if busy > self._peak:
            self._peak = busy

    def _answered(self, answer: Answer, sent: float, busy: int) -> None:
        self.share, self.keep, self.fleet_total = answer.share, answer.keep, answer.total
        self.holders = max(answer.holders, 1)
        self.lease_until = sent + self.ttl
        self._peak = busy
        if not self.store_up:
            self.store_up = True
            logs.event(
                logger,
                logging.WARNING,
                self.target,
                logs.BUDGET_STORE_BACK,
                "fleet budget: the store answers again; leases reconciled",
                holder=self.holder,
            )

    def _down(self, err: BaseException) -> None:
        was_up = self.store_up
        self.store_up = False
        self.lease_until = float("inf")  # nobody can take our leases through a store that is down
        self.next_sync = self._clock() + min(self.ttl * RENEW_FRACTION, RENEW_MAX)
        if was_up:
            logs.event(
                logger,
                logging.WARNING,
                self.target,
                logs.BUDGET_STORE_DOWN,
                "fleet budget: the store cannot be reached (%s); policy %r: keeping the leases held",
                describe_error(err),
                self.on_down,
                policy=self.on_down,
                holder=self.holder,
            )

    # -- decisions ------------------------------------------------------------------

    def acquire(self, *, held: int, busy: int) -> tuple[int, bool]:
        """Ask for a lease before opening a connection: (token, stale).

        A token > 0 is a lease; :data:`UNLEASED` (0) means open it without one (the store is down
        and the local cap allows it); -1 means denied. ``stale``: the holder had expired in the
        store (a long pause); the caller syncs, then asks again.
        """
        if not self.store_up and self._clock() < self.next_sync:
            return UNLEASED, False
        sent = self._clock()
        try:
            answer = self._get_store().acquire(
                self.holder, held=held, floor=self.floor, demand=self.demand(busy)
            )
        except StoreDown as err:
            self._down(err)
            return UNLEASED, False
        if answer.stale:
            self.store_up = True
            return -1, True
        with self._lock:
            self._answered(answer, sent, busy)
            if answer.token:
                self.acquires += 1
            else:
                self.denied += 1
        return (answer.token if answer.token else -1), False

    def down_cap(self, held: int) -> int:
        """The local ceiling while the store is down, by ``budget_on_redis_down``."""
        if self.on_down == "max":
            return self.max_size
        if self.on_down == "held":
            return held
        # the last share, even below what is held, and at most an equal part: shares learnt at
        # different moments need not sum to the budget, equal parts of it do (connections
        # above the cap close as they come back)
        return min(self.share, self.budget // self.holders, self.max_size)

    def sync_due(self, now: float) -> bool:
        return now >= self.next_sync or now >= self.lease_until - self.ttl * RENEW_FRACTION

    def sync(self, tokens: Sequence[int], unleased: int, busy: int) -> Answer | None:
        """Renew every lease held and report demand, in one round trip; None if the store is down.

        The answer says which tokens were lost (the holder expired: a pause past the
        TTL, or the store lost its data) and grants new ones for connections that have
        none, as far as the budget allows.
        """
        sent = self._clock()
        self.next_sync = sent + min(self.ttl * RENEW_FRACTION, RENEW_MAX)
        self._flush_releases()
        try:
            answer = self._get_store().sync(
                self.holder, tokens=tokens, unleased=unleased, floor=self.floor, demand=self.demand(busy)
            )
        except StoreDown as err:
            self._down(err)
            return None
        with self._lock:
            self._answered(answer, sent, busy)
            self.syncs += 1
            self.lost += len(answer.lost)
        if answer.lost:
            logs.event(
                logger,
                logging.WARNING,
                self.target,
                logs.BUDGET_LEASES_LOST,
                "fleet budget: %d leases lost (%s); their connections are closed unless re-leased",
                len(answer.lost),
                "the holder had expired" if not answer.alive else "unknown to the store",
                lost=len(answer.lost),
                regranted=len(answer.granted),
                holder=self.holder,
            )
        return answer

    def single_flight(self) -> threading.Lock:
        """Held around a sync, so concurrent callers send one between them."""
        return self._sync_lock

    def release(self, token: int) -> bool:
        """Queue a lease to give back; True when the caller should schedule a flush."""
        with self._lock:
            self._releases.append(token)
            return len(self._releases) == 1

    def _flush_releases(self) -> None:
        with self._lock:
            tokens, self._releases = self._releases, []
        if not tokens:
            return
        # if the store is down, the next successful sync drops them: it sends only what is held
        with contextlib.suppress(StoreDown):
            self._get_store().release(self.holder, tokens)

    def flush_releases(self) -> None:
        if self.store_up:
            self._flush_releases()
        else:
            with self._lock:
                self._releases.clear()  # the sync after the outage reconciles the set

    def retry_delay(self, streak: int) -> float:
        """When a denied pool asks again: 50 ms after a first denial, doubling up to 400 ms while
        it stays denied (a full fleet frees leases only as fast as shares move), jittered."""
        base = min(RETRY_DENIED * (2 ** max(streak - 1, 0)), RETRY_DENIED_MAX)
        return float(base * (0.5 + self._rng.random()))

    def leave(self) -> None:
        """The pool closed: give back whatever is still held, in one round trip."""
        with self._lock:
            self._releases.clear()
        store = self._store
        if store is None:
            return
        try:
            store.leave(self.holder)
        except StoreDown:
            pass  # the TTL reclaims them
        finally:
            store.close()
            self._store = None

    def after_fork(self) -> None:
        """In a forked child: a new holder with nothing held (the parent's leases stay its own)."""
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._store = None  # never use the parent's sockets
        self.holder = new_holder_id()
        self.lease_until = float("inf")
        self._releases = []
        self.next_sync = float("-inf")
        self.store_up = True

    def status(self, *, leases: int, unleased: int) -> FleetStatus:
        return FleetStatus(
            budget=self.budget,
            target=self.target,
            holder=self.holder,
            share=self.share,
            keep=self.keep,
            leases=leases,
            unleased=unleased,
            fenced=self.fenced,
            fleet_total=self.fleet_total,
            holders=self.holders,
            store_up=self.store_up,
            acquires=self.acquires,
            denied=self.denied,
            syncs=self.syncs,
            lost=self.lost,
            store_calls=self.store_calls,
        )

    def describe(self) -> str:
        return (
            f"fleet budget {self.budget} for {self.target}: {self.fleet_total} leased fleet-wide, "
            f"share {self.share}{'' if self.store_up else ', store down'}"
        )


def build(config: Any, *, target: Callable[[], str], clock: Callable[[], float]) -> FleetBudget:
    """The budget of a pool built with ``config`` (``budget`` set): checked now, connected at its
    first physical connect. Without the ``redis`` package this is a ConfigError at construction."""
    from .errors import ConfigError

    try:
        import redis  # noqa: F401  (the store's client; imported by fleet_redis when first used)
    except ImportError:
        raise ConfigError(
            "budget", config.budget, "needs the redis package: pip install 'sqlalchemy-smartpool[redis]'"
        ) from None

    def key() -> str:
        return config.budget_key or target()

    def store() -> LeaseStore:
        from .fleet_redis import RedisLeaseStore

        return RedisLeaseStore(
            config.budget_redis,
            prefix=config.budget_prefix,
            target=key(),
            budget=config.budget,
            ttl=config.budget_ttl,
            timeout=min(config.budget_timeout, config.budget_ttl * RENEW_FRACTION),
        )

    return FleetBudget(
        budget=config.budget,
        ttl=config.budget_ttl,
        on_down=config.budget_on_redis_down,
        min_size=config.min_size,
        max_size=config.max_size,
        store_factory=store,
        target=key,
        clock=clock,
    )
