"""
What a registry read makes from a record (its decoded image, its wire
form), kept per image id for as long as the record it was made from is
equal: a listing's pages are read again and again and their images rarely
change, and decoding or encoding an image costs more than comparing it.
The records L{glance_tx.registry.sql.fresh} answers while the database is
unchanged are kept here too (their source: the database's version).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from attrs import define, field

S = TypeVar("S")
M = TypeVar("M")

#: How many images a L{Kept} keeps by default.
KEPT_IMAGES = 4096


@define
class Kept(Generic[S, M]):
    """
    By key, a source and what was made from it; the least recently used
    goes first when full, so a walk over more images than are kept evicts
    the pages read longest ago, not every page at once.
    """

    most: int = KEPT_IMAGES
    _kept: dict[str, tuple[S, M]] = field(factory=dict, init=False)

    def made(self, key: str, source: S, make: Callable[[S], M]) -> M:
        """
        What C{make} makes of C{source}: the one kept for C{key} if made
        from the same object or an equal one, else made now and kept.
        """
        kept = self.get(key)
        if kept is not None and (kept[0] is source or kept[0] == source):
            return kept[1]
        made = make(source)
        self.keep(key, source, made)
        return made

    def keep(self, key: str, source: S, made: M) -> None:
        """Keep C{made}, made from C{source}, for C{key} (the most recently used)."""
        if self._kept.pop(key, None) is None and len(self._kept) >= self.most:
            del self._kept[next(iter(self._kept))]
        self._kept[key] = (source, made)

    def get(self, key: str) -> tuple[S, M] | None:
        """The source and what was made of it for C{key} (now the most recently used)."""
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._kept[key] = kept
        return kept

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    def forget(self, key: str) -> None:
        self._kept.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._kept.clear()
