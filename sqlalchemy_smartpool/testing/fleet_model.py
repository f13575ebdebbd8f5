"""An in-memory :class:`~sqlalchemy_smartpool.fleet.LeaseStore`: the reference model of the Redis script.

Same operations, same answers, on an injected millisecond clock instead of
Redis ``TIME``. Unit tests run pools against it (several "processes" in one
test, no I/O); ``tests/integration/test_fleet_store.py`` runs random operation
sequences against it and the real script side by side and compares every
answer, so the Lua cannot drift from :func:`~sqlalchemy_smartpool.fleet.fair_shares`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..fleet import Answer, StoreDown, fair_shares, keep_limit, may_grant


class ModelStore:
    """Holders, their expiries and lease sets, and the fencing counter, as the script keeps them.

    One instance is the shared store; give each pool a :meth:`view` (its own call
    counter). ``down = True`` makes every call raise :class:`StoreDown`.
    """

    def __init__(self, *, budget: int, ttl: float, clock_ms: Callable[[], int]) -> None:
        self.budget = budget
        self.ttl_ms = max(int(ttl * 1000), 1)
        self.clock_ms = clock_ms
        self.expiry: dict[str, int] = {}
        self.info: dict[str, tuple[int, int]] = {}
        self.leases: dict[str, set[int]] = {}
        self.seq = 0
        self.down = False
        self.calls = 0

    # -- the script's steps ---------------------------------------------------------

    def _begin(self) -> int:
        if self.down:
            raise StoreDown("model store is down")
        self.calls += 1
        now = self.clock_ms()
        for h in [h for h, exp in self.expiry.items() if exp <= now]:
            del self.expiry[h]
            self.info.pop(h, None)
            self.leases.pop(h, None)
        return now

    def _register(self, holder: str, now: int, floor: int, demand: int) -> None:
        self.expiry[holder] = now + self.ttl_ms
        self.info[holder] = (floor, demand)

    def _shares(self, holder: str) -> tuple[int, int, int, int, int]:
        """(share, keep, total, what the others lack of their shares, held) -- the script's shares()."""
        wants = {h: (f, max(d, f)) for h, (f, d) in self.info.items() if h in self.expiry}
        shares = fair_shares(self.budget, wants)
        held = {h: len(self.leases.get(h, ())) for h in self.expiry}
        total = sum(held.values())
        share, mine = shares[holder], held[holder]
        unmet = sum(max(shares[h] - held[h], 0) for h in self.expiry if h != holder)
        keep = keep_limit(held=mine, share=share, unmet_others=unmet, free=self.budget - total)
        return share, keep, total, unmet, mine

    def _grant(self, holder: str) -> int:
        self.seq += 1
        self.leases.setdefault(holder, set()).add(self.seq)
        return self.seq

    # -- LeaseStore -----------------------------------------------------------------

    def acquire(self, holder: str, *, held: int, floor: int, demand: int) -> Answer:
        now = self._begin()
        if holder not in self.expiry and held > 0:
            return Answer(share=0, stale=True, alive=False)
        self._register(holder, now, floor, demand)
        share, keep, total, unmet, mine = self._shares(holder)
        if may_grant(self.budget, total=total, held=mine, share=share, unmet_others=unmet):
            token = self._grant(holder)
            return Answer(share=share, keep=keep, total=total + 1, token=token, holders=len(self.expiry))
        return Answer(share=share, keep=keep, total=total, holders=len(self.expiry))

    def sync(self, holder: str, *, tokens: Sequence[int], unleased: int, floor: int, demand: int) -> Answer:
        now = self._begin()
        alive = holder in self.expiry
        mine = self.leases.setdefault(holder, set())
        if alive:
            lost = [t for t in tokens if t not in mine]
            mine.intersection_update(tokens)
        else:
            mine.clear()
            lost = list(tokens)
        self._register(holder, now, floor, demand)
        want = unleased + len(lost)
        total = self._shares(holder)[2]
        granted: list[int] = []
        while len(granted) < want and total < self.budget:
            granted.append(self._grant(holder))
            total += 1
        share, keep, total, _, _ = self._shares(holder)
        return Answer(
            share=share, keep=keep, total=total, lost=tuple(lost), granted=tuple(granted), alive=alive
        )

    def release(self, holder: str, tokens: Sequence[int]) -> None:
        self._begin()
        if holder in self.expiry:
            self.leases.get(holder, set()).difference_update(tokens)

    def leave(self, holder: str) -> None:
        self._begin()
        self.expiry.pop(holder, None)
        self.info.pop(holder, None)
        self.leases.pop(holder, None)

    def close(self) -> None:
        pass

    # -- for tests ------------------------------------------------------------------

    def total(self) -> int:
        return sum(len(s) for h, s in self.leases.items() if h in self.expiry)

    def view(self) -> ModelView:
        return ModelView(self)


class ModelView:
    """One pool's client of a shared :class:`ModelStore` (its own ``calls``)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.calls = 0

    def acquire(self, holder: str, *, held: int, floor: int, demand: int) -> Answer:
        self.calls += 1
        return self.store.acquire(holder, held=held, floor=floor, demand=demand)

    def sync(self, holder: str, *, tokens: Sequence[int], unleased: int, floor: int, demand: int) -> Answer:
        self.calls += 1
        return self.store.sync(holder, tokens=tokens, unleased=unleased, floor=floor, demand=demand)

    def release(self, holder: str, tokens: Sequence[int]) -> None:
        self.calls += 1
        self.store.release(holder, tokens)

    def leave(self, holder: str) -> None:
        self.calls += 1
        self.store.leave(holder)

    def close(self) -> None:
        pass
