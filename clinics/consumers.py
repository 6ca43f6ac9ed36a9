"""The agenda's websocket: every open calendar of a clinic hears about its slots changing.

`/ws/agenda/?clinic=<id>` joins the group `agenda-<id>` when the user works for that clinic
(else it closes with 4404, like every console socket). Frames follow sophia_web.live: numbered
per group; on (re)connect the page asks to "resync" from the numbers it has and gets exactly what
it missed, or "resync.reset" when the backlog no longer reaches back (the page then reloads its
grid).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from clinics import access
from sophia_web import live


def agenda_group(clinic_id: int) -> str:
    return f"agenda-{clinic_id}"


class AgendaConsumer(live.LiveConsumerMixin, AsyncJsonWebsocketConsumer):
    group: str | None = None
    joined: list[str] = []

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        clinic = await database_sync_to_async(access.clinic_for_user)(
            self.scope.get("user"), (query.get("clinic") or [""])[0]
        )
        if clinic is None:
            await self.close(code=4404)
            return
        self.group = agenda_group(clinic.pk)
        self.joined = [self.group]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.start_watching()  # cells are rendered only for watched agendas

    async def disconnect(self, code: int) -> None:
        await self.stop_watching()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("action") != "resync" or not self.group:
            return
        since = content.get("since")
        seq = since.get(self.group, 0) if isinstance(since, dict) else 0
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            seq = 0
        missed = await database_sync_to_async(live.events_after)(self.group, seq)
        if missed is None:
            last = await database_sync_to_async(live.last_sequence)(self.group)
            await self.send_json({"group": self.group, "event": "resync.reset", "seq": last})
        else:
            for event in missed:
                await self.send_json(event)
        await self.send_json({"group": self.group, "event": "resync.done"})

    async def live_event(self, message: dict) -> None:
        await self.send_json({k: v for k, v in message.items() if k != "type"})
