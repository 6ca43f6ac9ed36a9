"""Login throttling: django-axes on every login that comes through a request."""

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class ThrottledLoginBackend(AxesStandaloneBackend):
    """django-axes' lock-out check before the password check.

    Authentication without a request (Django's test client `login()`, the shell) has no client
    address to throttle; django-axes would raise there, so it is left to the next backend.
    """

    def authenticate(self, request: HttpRequest | None = None, *args: Any, **kwargs: Any):
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)
