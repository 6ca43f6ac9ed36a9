"""Django's ASGI handler, cheaper per request: the middleware chain and the view run in one
thread, taken from a small pool of threads that serve request after request."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import AsyncToSync, ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


class SyncChainASGIHandler(ASGIHandler):
    """`ASGIHandler` with three changes, all about threads (figures: bench/README.md, fifth
    session).

    - The middleware chain is built as under WSGI: synchronous from the view up to the first
      async-only middleware (servestatic's, first in MIDDLEWARE), then asynchronous to the top.
      Every view and nearly every middleware of Sophia is synchronous; Django's own handler
      builds the chain on its async `_get_response_async`, so a request hopped into a thread
      for the synchronous middleware, back to the event loop to resolve the URL, into the
      thread again for each `process_view` and once more for the view. Here it enters a thread
      once and runs all of that there.
    - Django starts a thread per request (a `ThreadSensitiveContext` of its own). Here the
      request's context runs on a thread kept from an earlier request (asgiref's
      executor-owning context), as a WSGI server's threads do, and the thread's database
      wrapper is reused (its connection still goes back to the pool when the request ends).
    - At most SOPHIA_WEB_THREADS requests run their middleware and view at once; the others
      wait on the event loop (their bodies already read), which costs nothing. Sixteen
      concurrent webhooks in sixteen threads spent more CPU handing Python's GIL around
      between their database round trips than running Python. Websockets are not counted:
      channels runs them outside this handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads = settings.SOPHIA_WEB_THREADS
        self._idle_threads: list[ThreadPoolExecutor] = []
        self._free: asyncio.Semaphore | None = None
        self._free_loop: asyncio.AbstractEventLoop | None = None

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain
        if isinstance(chain, AsyncToSync):
            # An async-only middleware sits on top (servestatic): the build ended by wrapping
            # the chain for a synchronous caller; this caller is the event loop, so unwrap it.
            self._middleware_chain = chain.awaitable
        else:
            self._middleware_chain = sync_to_async(chain, thread_sensitive=True)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # The event loop is the only caller: taking and giving back need no lock.
        thread = (
            self._idle_threads.pop()
            if self._idle_threads
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="sophia-request")
        )
        try:
            # Everything the request started has finished when handle() returns.
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle_threads) < self.threads:
                self._idle_threads.append(thread)
            else:  # more requests than threads were reading their bodies at once
                thread.shutdown(wait=False)

    async def get_response_async(self, request):
        # Bounded here, after the body has been read: a client sending its body slowly holds
        # no thread that others wait for.
        async with self._free_threads():
            return await super().get_response_async(request)

    def _free_threads(self) -> asyncio.Semaphore:
        # asyncio primitives belong to one event loop: daphne runs one, a test suite many.
        loop = asyncio.get_running_loop()
        if self._free is None or self._free_loop is not loop:
            self._free, self._free_loop = asyncio.Semaphore(self.threads), loop
        return self._free
