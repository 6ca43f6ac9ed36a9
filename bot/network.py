"""The rule for every outbound HTTP call (Graph API, LLM): never while a database transaction —
and so a row lock — is open. A call that waits on the network would hold the lock just as long.

bot.whatsapp's httpx client carries `guard` as a request hook; bot.llm calls `check` before each
request (the OpenAI SDK would turn a hook's exception into a connection error). Both raise
`NetworkInTransactionError` when SOPHIA_NETWORK_GUARD is "raise" (the tests) and log an error
otherwise, so a slip costs time in production, not messages.
"""

from __future__ import annotations

import logging

import httpx
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)


class NetworkInTransactionError(RuntimeError):
    pass


def open_transaction() -> str | None:
    """The alias of a connection of this thread inside a transaction, or None.

    A test's own wrapping transaction (pytest-django's, TestCase's) doesn't count: production
    code never runs inside it.
    """
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block and any(
            not block._from_testcase for block in connection.atomic_blocks
        ):
            return connection.alias
    return None


def check(destination: str) -> None:
    """Refuse (tests) or report (production) a network call from inside a transaction."""
    alias = open_transaction()
    if alias is None:
        return
    message = f"call to {destination} inside a transaction on {alias!r}"
    if settings.SOPHIA_NETWORK_GUARD == "raise":
        raise NetworkInTransactionError(message)
    logger.error("%s: the lock is held while waiting on the network", message)


def guard(request: httpx.Request) -> None:
    """httpx request hook running `check`."""
    check(f"{request.method} {request.url.host}")
