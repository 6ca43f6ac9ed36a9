"""Engine fixtures: a clinic with several specialties and agendas, and a chat driver.

`Chat` plays one WhatsApp number against `bot.engine.step`, keeping the snapshot between turns
exactly as bot.processing would (state, data, patient id), so tests read like conversations.
"""

import datetime as dt

import pytest
import redis as redis_lib
from django.conf import settings
from django.utils import timezone

from bot import engine
from bot.gateway import OrmGateway, hold_owner
from bot.messages import Inbound, Reply
from clinics.models import Doctor, Slot, Specialty
from tests.conftest import make_slots

ANA_WA = "573001234567"  # the `patient` fixture's number
STRANGER_WA = "573119998877"
NEW_WA = "573205556677"


class FakeLLM:
    """Records every call: deterministic paths must leave `calls` empty."""

    def __init__(self, answer: str = "Con gusto te cuento: tenemos parqueadero gratuito."):
        self.calls: list[tuple[str, str]] = []
        self._answer = answer

    def classify(self, text, specialties):
        self.calls.append(("classify", text))
        return None

    def answer(self, question, clinic, specialties, faq=()):
        self.calls.append(("answer", question))
        return self._answer, (120, 30)


class Chat:
    def __init__(self, clinic, wa_id: str, conversation_id: int = 4242, llm=None):
        self.clinic = clinic
        self.wa_id = wa_id
        self.conversation_id = conversation_id
        self.llm = llm
        self.snapshot = engine.Snapshot()
        self.results: list[engine.StepResult] = []

    @property
    def holder(self) -> str:
        return hold_owner(self.conversation_id)

    @property
    def state(self) -> engine.State:
        return self.snapshot.state

    @property
    def data(self) -> dict:
        return self.snapshot.data

    def _step(self, inbound: Inbound, now=None) -> engine.StepResult:
        ctx = engine.Context(
            gateway=OrmGateway(self.clinic, self.conversation_id),
            conversation_id=self.conversation_id,
            wa_id=self.wa_id,
            now=now or timezone.now(),
            llm=self.llm,
        )
        before = engine.Snapshot(
            state=self.snapshot.state,
            data=dict(self.snapshot.data),
            patient_id=self.snapshot.patient_id,
        )
        result = engine.step(before, inbound, ctx)
        self.snapshot = result.snapshot
        self.results.append(result)
        return result

    def send(self, text: str, now=None) -> engine.StepResult:
        return self._step(Inbound(kind="text", text=text, wa_id=self.wa_id), now)

    def tap(self, reply_id: str, title: str = "", kind: str = "interactive") -> engine.StepResult:
        return self._step(Inbound(kind=kind, text=title, reply_id=reply_id, wa_id=self.wa_id))

    def unsupported(self) -> engine.StepResult:
        return self._step(Inbound(kind="unsupported", wa_id=self.wa_id))


def texts(result: engine.StepResult) -> str:
    return "\n".join(reply.text for reply in result.replies)


def tomorrow_utc(hour: int, minute: int = 0) -> dt.datetime:
    """Tomorrow at hour:minute UTC (Bogotá is UTC−5: 13:00 UTC is 8:00 a. m. there)."""
    return (timezone.now() + dt.timedelta(days=1)).replace(
        hour=hour, minute=minute, second=0, microsecond=0
    )


@pytest.fixture
def fake_llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def specialties(clinic, specialty) -> dict[str, Specialty]:
    """Medicina general (the shared fixture) plus three more with keywords."""
    extra = {
        "odontologia": ("Odontología", "muela, diente, dientes, encías, caries"),
        "dermatologia": ("Dermatología", "piel, acné, manchas, granos, picazón"),
        "pediatria": ("Pediatría", "mi hijo, mi hija, bebé, niño, niña"),
    }
    found = {specialty.slug: specialty}
    for slug, (name, keywords) in extra.items():
        found[slug] = Specialty.objects.create(
            clinic=clinic, slug=slug, name=name, triage_keywords=keywords
        )
    return found


@pytest.fixture
def agenda(clinic, specialties, doctor, slots) -> dict:
    """Medicina general: 30 slots (Dr. Carlos García, three pages). Odontología: 3 slots.
    Dermatología and pediatría: no slots at all."""
    dentist = Doctor.objects.create(clinic=clinic, full_name="Dra. Laura Méndez")
    dentist.specialties.add(specialties["odontologia"])
    dental = make_slots(dentist, tomorrow_utc(19), 3, minutes=30)  # 2:00 p. m. Bogotá
    return {"general": slots, "dental": dental, "dentist": dentist}


@pytest.fixture
def chat(clinic, agenda, patient) -> Chat:
    """Ana María from her own number (on file)."""
    return Chat(clinic, ANA_WA)


@pytest.fixture
def identified_chat(chat) -> Chat:
    chat.send("1020304050")
    assert chat.state == engine.State.IDENTIFIED
    return chat


@pytest.fixture
def choosing_chat(identified_chat) -> Chat:
    identified_chat.send("tengo fiebre y dolor de cabeza")
    assert identified_chat.state == engine.State.CHOOSING_SLOT
    return identified_chat


@pytest.fixture
def confirming_chat(choosing_chat) -> Chat:
    choosing_chat.send("1")
    assert choosing_chat.state == engine.State.CONFIRMING
    return choosing_chat


def slot_ids(result: engine.StepResult) -> list[int]:
    rows = [row for reply in result.replies for row in reply.rows]
    return [int(row.id.split(":")[1]) for row in rows if row.id.startswith("slot:")]


def first_list(result: engine.StepResult) -> Reply:
    return next(reply for reply in result.replies if reply.kind == "list")


def free_slot_count(slots: list[Slot]) -> int:
    return Slot.objects.filter(pk__in=[s.pk for s in slots], status="free").count()


@pytest.fixture
def r():
    """A client on the tests' Redis database, for asserting the keys the bot writes."""
    client = redis_lib.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    yield client
    client.close()
