"""Middleware that shapes how Django runs the others."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


def sync_chain(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable:
    """The innermost middleware, sync only, doing nothing itself.

    Every view and middleware of Sophia's HTTP side is synchronous. Under ASGI, Django builds
    the middleware chain from the innermost out and keeps each one in the mode of the handler
    it wraps: with an async handler at the bottom, every `process_request`/`process_response`
    of the chain is a separate hop into a worker thread (about fifteen per request). A sync-only
    middleware at the bottom makes the whole chain synchronous: one hop in per request, one back
    to reach the view.
    """
    return get_response


sync_chain.sync_capable = True
sync_chain.async_capable = False
