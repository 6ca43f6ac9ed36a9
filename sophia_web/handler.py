"""Django's ASGI handler with the middleware chain and the view in one thread per request."""

from __future__ import annotations

from asgiref.sync import AsyncToSync, sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SyncChainASGIHandler(ASGIHandler):
    """`ASGIHandler` whose middleware chain is built as under WSGI: synchronous from the view up
    to the first async-only middleware (servestatic's), then asynchronous to the top.

    Every view and nearly every middleware of Sophia is synchronous. Django's own ASGI handler
    builds the chain on its async `_get_response_async`, so a request hopped into a worker thread
    for the synchronous middleware, back to the event loop to resolve the URL, into the thread
    again for each `process_view` and once more for the view: five thread hand-offs where one
    does. Built like this, a request enters a thread once (below servestatic) and runs the
    remaining middleware, the URL resolution, `process_view` and the view there: 15 % less CPU
    per request in daphne (bench/README.md, fifth session).
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain
        if isinstance(chain, AsyncToSync):
            # An async-only middleware sits on top (servestatic): the build ended by wrapping
            # the chain for a synchronous caller; this caller is the event loop, so unwrap it.
            self._middleware_chain = chain.awaitable
        else:
            self._middleware_chain = sync_to_async(chain, thread_sensitive=True)
