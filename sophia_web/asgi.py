"""HTTP and websocket entry point (daphne)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sophia_web.settings")
# What django.core.asgi.get_asgi_application() does, with the one-thread handler.
django.setup(set_prefix=False)

from sophia_web.handler import SyncChainASGIHandler  # noqa: E402

django_asgi_app = SyncChainASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from sophia_web.logging import route_daphne_access_log  # noqa: E402
from sophia_web.routing import websocket_urlpatterns  # noqa: E402

# daphne's access log through Python logging: JSON and masked like every other line.
route_daphne_access_log()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
