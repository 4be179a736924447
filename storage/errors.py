"""Exceptions raised by the storage layer.

Every error carries the numbers a cog needs to tell the user what was wrong and what to do.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of all storage errors."""


class WrongGuild(StorageError):
    """A row of another server was named (ids from members are not trusted across servers)."""


class InsufficientCredits(StorageError):
    """The account cannot pay ``cost``; nothing was written."""

    def __init__(self, cost: int, balance: int) -> None:
        super().__init__(f"this costs {cost} credits but the balance is {balance}")
        self.cost = cost
        self.balance = balance


class QueueFull(StorageError):
    """The user already has ``limit`` queued jobs; nothing was written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"you already have {limit} queued jobs; wait for one to finish or cancel one")
        self.limit = limit
