"""
Validated tokens, remembered so that Keystone is not asked on every request.

Keyed by the token's sha256 (keystonemiddleware's choice: the tokens
themselves are not kept). An entry lasts until the sooner of the token's
own expiry and C{token_cache_time} after validation, so a revoked token is
honoured for at most that long. The cache is bounded: past C{max_entries}
the least recently used entry goes. Concurrent requests with one token
that is not cached yet share one validation.

Refusals are remembered too (as keystonemiddleware does), for as long: an
expired or revoked token never becomes valid again, and a caller retrying
a bad token must not cost Keystone a validation each time. Failures to ask
Keystone are not remembered.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from glance_tx.identity.keystone_client import InvalidToken, TokenInfo
from glance_tx.once import Once, run_once

#: Entries kept at most (a few MiB: a TokenInfo is well under 1 KiB).
MAX_ENTRIES = 10000


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@define
class TokenCache:
    """
    C{get(token, validate)}: the cached L{TokenInfo} of C{token}, or
    C{validate}'s (shared by every caller waiting for the same token).
    """

    clock: IReactorTime
    #: Seconds an entry is trusted at most (C{token_cache_time}); 0: not cached.
    ttl: float
    max_entries: int = MAX_ENTRIES
    #: sha256 -> (until, what Keystone said: the token's info, or its refusal)
    _entries: OrderedDict[str, tuple[float, TokenInfo | InvalidToken]] = field(
        factory=OrderedDict, init=False
    )
    _pending: dict[str, Once[TokenInfo]] = field(factory=dict, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self,
        token: str,
        validate: Callable[[str], Awaitable[TokenInfo]],
        allow_expired: bool = False,
    ) -> TokenInfo:
        """
        With C{allow_expired} (C{validate} asks Keystone so), an expired
        token's info is accepted and remembered apart, for C{ttl} only.
        """
        key = token_key(token) + ("+expired" if allow_expired else "")
        now = self.clock.seconds()
        entry = self._entries.get(key)
        if entry is not None:
            until, info = entry
            if now < until:
                self._entries.move_to_end(key)
                if isinstance(info, InvalidToken):
                    raise InvalidToken(str(info))
                return info
            del self._entries[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = run_once(self._validate(key, token, validate, allow_expired))
            if not pending.done:  # (an in-memory Keystone answers at once)
                self._pending[key] = pending
        return await pending.observe()

    async def _validate(
        self,
        key: str,
        token: str,
        validate: Callable[[str], Awaitable[TokenInfo]],
        allow_expired: bool,
    ) -> TokenInfo:
        try:
            info = await validate(token)
            if not allow_expired and info.expires <= self.clock.seconds():
                raise InvalidToken("The token has expired")
        except InvalidToken as refusal:
            self._remember(key, self.clock.seconds() + self.ttl, refusal)
            raise
        finally:
            self._pending.pop(key, None)
        until = self.clock.seconds() + self.ttl
        self._remember(key, until if allow_expired else min(info.expires, until), info)
        return info

    def _remember(self, key: str, until: float, outcome: TokenInfo | InvalidToken) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (until, outcome)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
