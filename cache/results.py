"""What a conditional write (``create_if_absent``, ``replace_if``) tells its caller.

A conditional write that does not apply is not an error: it is the answer a booking
flow needs ("someone else took the slot, and here is their booking"). So it returns a
result rather than raising, and that result carries the row that won.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class WriteOutcome(StrEnum):
    """How a conditional write ended."""

    #: ``create_if_absent``: the row did not exist and now holds the data
    CREATED = "created"
    #: ``create_if_absent``: a row was there; it is unchanged (``current``)
    ALREADY_EXISTS = "already_exists"
    #: ``replace_if``: every expected field matched; the row now holds the data
    REPLACED = "replaced"
    #: ``replace_if``: there was no row to replace; nothing was written
    MISSING = "missing"
    #: ``replace_if``: a field differed from the expected value; the row is unchanged
    #: (``current``)
    CONDITION_NOT_MET = "condition_not_met"


APPLIED = frozenset({WriteOutcome.CREATED, WriteOutcome.REPLACED})


@dataclass(frozen=True, slots=True)
class WriteResult(Generic[T]):
    """The outcome of a conditional write, and the row that stopped it.

    ``current`` is the row as the cache held it when the write did not apply
    (``ALREADY_EXISTS``, ``CONDITION_NOT_MET``): a dict, or the ``models=`` class.
    It is ``None`` when the write applied (the row is the data you passed) and when
    the row was ``MISSING``. ``bool(result)`` is ``True`` exactly when the write applied.
    """

    outcome: WriteOutcome
    current: T | None = None
    #: the document key written (or not), for log lines
    key: str = ""

    @property
    def applied(self) -> bool:
        return self.outcome in APPLIED

    def __bool__(self) -> bool:
        return self.outcome in APPLIED
