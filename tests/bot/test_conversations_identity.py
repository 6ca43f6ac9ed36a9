"""Family, identity and attacker conversations, end to end: each message enters through the
signed webhook, its turn runs through the worker's claim-and-run step with the real engine on
PostgreSQL and Redis, and the replies are read back from the fake Graph API over HTTP.

What they hold: a document alone opens nothing; from a number that is not verified for it, a
known and an unknown document get the same questions; wrong birth dates are counted per patient
and per number and lock until staff lift it — not reset by typing one's own document, an idle
close, a new conversation or another number; a verified new number is added, never replacing
the one on file; a parent books for a child under the child, and "mis citas" on a number shows
its patients' appointments and no one else's.
"""

import datetime as dt
import itertools

import pytest
from django.utils import timezone

from bot import periodic
from bot.models import Conversation
from clinics import services
from clinics.models import (
    Appointment,
    Doctor,
    IdentityLockout,
    Patient,
    PatientPhone,
)
from clinics.services import Actor
from tests.bot.conftest import tomorrow_utc
from tests.bot.test_processing import receive, reply_message, run_ready_tasks, text_message
from tests.conftest import make_slots
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph  # the fixture

ANA_DOC, ANA_BIRTH, ANA_WA = "1020304050", "14/03/1985", "573001234567"
ATTACKER, ATTACKER_2, ATTACKER_3 = "573119998877", "573128887766", "573137776655"
PARENT = "573154443322"
UNKNOWN_DOC = "99887766"
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.WHATSAPP_APP_SECRET = "test-app-secret"
    settings.SOPHIA_RATE_LIMIT_PER_MINUTE = 1000  # long conversations, one minute


class Phone:
    """One WhatsApp number: `say` posts a signed webhook, runs the queued turns, returns the
    texts the patient reads (lists and buttons included, their rows and buttons too)."""

    def __init__(self, clinic, graph, wa_id: str) -> None:
        self.clinic, self.graph, self.wa_id = clinic, graph, wa_id
        self.last: list = []

    def _send(self, message: dict) -> str:
        before = len(self.graph.messages_to(self.wa_id))
        receive(self.clinic, message)
        run_ready_tasks()
        self.last = self.graph.messages_to(self.wa_id)[before:]
        parts = []
        for reply in self.last:
            parts.append(reply.text)
            parts += [row["title"] for row in reply.rows]
            parts += [button["title"] for button in reply.buttons]
        return "\n".join(parts)

    def say(self, text: str) -> str:
        return self._send(text_message(text, wa_id=self.wa_id))

    def tap(self, title_part: str) -> str:
        """Choose the row or button whose title contains `title_part`."""
        for reply in reversed(self.last):
            for row in reply.rows:
                if title_part.lower() in row["title"].lower():
                    return self._send(reply_message(row["id"], row["title"], wa_id=self.wa_id))
            for button in reply.buttons:
                if title_part.lower() in button["title"].lower():
                    return self._send(
                        reply_message(
                            button["id"], button["title"], kind="button_reply", wa_id=self.wa_id
                        )
                    )
        raise AssertionError(f"no row or button {title_part!r} in {[r.json for r in self.last]}")

    def book_first_slot(self) -> str:
        self.tap(":")  # the first row shows a time
        return self.tap("Confirmar")

    def close_idle(self) -> None:
        """What 30 idle minutes do: the next message starts a new session."""
        Conversation.objects.filter(clinic=self.clinic, wa_id=self.wa_id).update(
            last_activity_at=timezone.now() - dt.timedelta(hours=1)
        )
        periodic.close_idle_conversations()


@pytest.fixture
def pediatrician(clinic, specialties):
    doctor = Doctor.objects.create(clinic=clinic, full_name="Dra. Marta Rojas")
    doctor.specialties.add(specialties["pediatria"])
    make_slots(doctor, tomorrow_utc(20), 4)  # 3:00 p. m. Bogotá
    return doctor


@pytest.fixture
def other_patient(clinic) -> Patient:
    return Patient.objects.create(
        clinic=clinic,
        document="79111222",
        full_name="Luis Pérez",
        birth_date=dt.date(1970, 1, 2),
        whatsapp_id="573009998877",
    )


@pytest.fixture
def phone(clinic, fake_graph, specialties, slots, pediatrician):
    return lambda wa_id: Phone(clinic, fake_graph, wa_id)


pytestmark = pytest.mark.django_db(transaction=True)


# 1 ------------------------------------------------------------------------------------------
def test_a_known_and_an_unknown_document_get_the_same_questions(phone, patient):
    known, unknown = phone(ATTACKER), phone(ATTACKER_2)
    known.say("hola")
    unknown.say("hola")
    assert known.say(ANA_DOC) == unknown.say(UNKNOWN_DOC)
    assert "fecha de nacimiento" in known.last[0].text
    # A wrong date for Ana's document and any date for a document that is nobody's: the same.
    assert known.say("01/01/1990") == unknown.say("01/01/1990")
    assert "nombre completo" in known.last[0].text
    assert "Ana" not in known.last[0].text


# 2 ------------------------------------------------------------------------------------------
def test_an_unknown_document_registers_after_birth_date_and_name(phone, clinic):
    newcomer = phone(ATTACKER)
    newcomer.say(UNKNOWN_DOC)
    newcomer.say("02/02/1992")
    done = newcomer.say("Pedro Pérez Ruiz")
    assert "Pedro" in done
    patient = Patient.objects.get(document=UNKNOWN_DOC)
    assert patient.birth_date == dt.date(1992, 2, 2) and patient.whatsapp_id == ATTACKER
    newcomer.say("tengo fiebre")
    newcomer.book_first_slot()
    assert Appointment.objects.filter(patient=patient).count() == 1


# 3 ------------------------------------------------------------------------------------------
def test_three_wrong_dates_lock_ana_even_across_idle_closes(phone, patient):
    attacker = phone(ATTACKER)
    for guess in ("01/01/1980", "02/02/1981"):
        attacker.say(ANA_DOC)
        attacker.say(guess)
        attacker.close_idle()
    attacker.say(ANA_DOC)
    attacker.say("03/03/1982")
    assert IdentityLockout.objects.filter(patient=patient, lifted_at=None).exists()
    # Now even the right date opens nothing, from this number or a fresh one.
    for wa_id in (ATTACKER, ATTACKER_2):
        other = phone(wa_id)
        other.say(ANA_DOC)
        answer = other.say(ANA_BIRTH)
        assert "Ana" not in answer
        assert "mis citas" not in answer.lower()
        assert "Ana" not in other.say("mis citas")
    assert not PatientPhone.objects.exists()


# 4 ------------------------------------------------------------------------------------------
def test_typing_ones_own_document_between_guesses_resets_nothing(phone, patient):
    attacker = phone(ATTACKER)
    attacker.say(UNKNOWN_DOC)
    attacker.say("02/02/1992")
    attacker.say("Mario Mendoza")  # the attacker's own, self-registered
    for guess in ("01/01/1980", "02/02/1981", "03/03/1982"):
        attacker.say(ANA_DOC)
        attacker.say(guess)
        attacker.say(UNKNOWN_DOC)  # back to being himself
    attacker.say(ANA_DOC)
    assert "Ana" not in attacker.say(ANA_BIRTH)
    assert IdentityLockout.objects.filter(patient=patient, lifted_at=None).exists()
    assert IdentityLockout.objects.filter(wa_id=ATTACKER, lifted_at=None).exists()


# 5 ------------------------------------------------------------------------------------------
def test_guesses_from_several_numbers_add_up_and_ana_still_books_from_her_phone(phone, patient):
    for wa_id, guess in ((ATTACKER, "01/01/1980"), (ATTACKER_2, "02/02/1981")):
        guesser = phone(wa_id)
        guesser.say(ANA_DOC)
        guesser.say(guess)
    third = phone(ATTACKER_3)
    third.say(ANA_DOC)
    third.say("03/03/1982")
    third.say(ANA_DOC)
    assert "Ana" not in third.say(ANA_BIRTH)
    # Ana's own number on file is not locked out by strangers.
    ana = phone(ANA_WA)
    assert "Ana" in ana.say(ANA_DOC)
    ana.say("tengo fiebre")
    ana.book_first_slot()
    assert Appointment.objects.filter(patient=patient).count() == 1


# 6 ------------------------------------------------------------------------------------------
def test_after_staff_lift_the_lock_ana_verifies_a_new_phone_which_is_added(
    phone, clinic, patient, receptionist
):
    attacker = phone(ATTACKER)
    for guess in ("01/01/1980", "02/02/1981", "03/03/1982"):
        attacker.say(ANA_DOC)
        attacker.say(guess)
    for lockout in IdentityLockout.objects.filter(lifted_at=None):
        services.identity_lockout_lift(
            clinic=clinic, lockout_id=lockout.pk, actor=Actor.staff(receptionist)
        )
    new_phone = phone(ATTACKER_3)  # Ana's new phone
    new_phone.say(ANA_DOC)
    assert "Ana" in new_phone.say(ANA_BIRTH)
    patient.refresh_from_db()
    assert patient.whatsapp_id == ANA_WA  # the number on file stays
    assert PatientPhone.objects.get(patient=patient).wa_id == ATTACKER_3


# 7 ------------------------------------------------------------------------------------------
def test_a_guessed_match_does_not_hand_over_anas_number(phone, patient):
    guesser = phone(ATTACKER)
    guesser.say(ANA_DOC)
    guesser.say(ANA_BIRTH)  # someone who knows her birth date
    patient.refresh_from_db()
    assert patient.whatsapp_id == ANA_WA
    # Ana's next message from her own phone still identifies her at once.
    ana = phone(ANA_WA)
    assert "Ana" in ana.say(ANA_DOC)


# 8 ------------------------------------------------------------------------------------------
def test_a_parent_registers_a_child_and_books_under_the_child(phone, clinic):
    parent = phone(PARENT)
    parent.say("55667788")
    parent.say("10/10/1980")
    parent.say("Laura Torres")
    asked = parent.say("es para mi hijo, tiene fiebre")
    assert "para quién" in asked.lower()
    parent.tap("Otra persona")
    parent.say("1122334455")
    parent.say("05/05/2018")
    registered = parent.say("Tomás Torres")
    assert "Tomás" in registered
    parent.book_first_slot()
    child = Patient.objects.get(document="1122334455")
    assert child.whatsapp_id == PARENT  # linked to the parent's number
    appointment = Appointment.objects.get()
    assert appointment.patient == child
    assert "fiebre" in appointment.patient_notes


# 9 ------------------------------------------------------------------------------------------
def test_mis_citas_shows_the_numbers_patients_and_no_one_elses(phone, clinic, patient, slots):
    parent = phone(PARENT)
    parent.say("55667788")
    parent.say("10/10/1980")
    parent.say("Laura Torres")
    laura = Patient.objects.get(document="55667788")
    child = services.patient_register(
        clinic=clinic,
        document="1122334455",
        full_name="Tomás Torres",
        birth_date=dt.date(2018, 5, 5),
        whatsapp_id=PARENT,
        actor=Actor.system("front desk"),
    )
    staff = Actor.system("test")
    for who, slot in ((laura, slots[0]), (child, slots[1]), (patient, slots[2])):
        services.appointment_book(
            clinic=clinic, patient=who, slot_id=slot.pk, actor=staff, source="staff"
        )
    listing = parent.say("mis citas")
    assert "Laura" in listing and "Tomás" in listing
    assert "Ana" not in listing
    assert listing.count("\n") >= 2


# 10 -----------------------------------------------------------------------------------------
def test_pediatric_symptoms_ask_whose_appointment_and_a_known_child_is_verified(
    phone, clinic, slots
):
    child = services.patient_register(
        clinic=clinic,
        document="1122334455",
        full_name="Tomás Torres",
        birth_date=dt.date(2018, 5, 5),
        whatsapp_id="573160001111",  # the other parent's phone is on file
        actor=Actor.system("front desk"),
    )
    parent = phone(PARENT)
    parent.say("55667788")
    parent.say("10/10/1980")
    parent.say("Laura Torres")
    asked = parent.say("mi bebé tiene fiebre y tos")
    assert "para quién" in asked.lower()
    parent.tap("Otra persona")
    assert "fecha de nacimiento" in parent.say("1122334455")
    assert "Tomás" in parent.say("05/05/2018")
    parent.book_first_slot()
    assert Appointment.objects.get().patient == child
    child.refresh_from_db()
    assert child.whatsapp_id == "573160001111"
    assert PatientPhone.objects.filter(patient=child, wa_id=PARENT).exists()


# 11 -----------------------------------------------------------------------------------------
def test_a_parent_picks_a_child_already_on_the_number_without_checks(phone, clinic, slots):
    parent = phone(PARENT)
    parent.say("55667788")
    parent.say("10/10/1980")
    parent.say("Laura Torres")
    child = services.patient_register(
        clinic=clinic,
        document="1122334455",
        full_name="Tomás Torres",
        birth_date=dt.date(2018, 5, 5),
        whatsapp_id=PARENT,
        actor=Actor.system("front desk"),
    )
    parent.say("necesito una cita para mi hija, tiene fiebre")
    assert "Tomás" in "\n".join(r["title"] for m in parent.last for r in m.rows)
    parent.tap("Tomás")
    parent.book_first_slot()
    assert Appointment.objects.get().patient == child


# 12 -----------------------------------------------------------------------------------------
def test_a_number_staff_removed_speaks_for_the_patient_no_more(
    phone, clinic, patient, receptionist
):
    ana = phone(ANA_WA)
    assert "Ana" in ana.say(ANA_DOC)
    services.patient_phone_remove(
        clinic=clinic, patient=patient, wa_id=ANA_WA, actor=Actor.staff(receptionist)
    )
    answer = ana.say("mis citas")
    assert "Ana" not in answer
    assert "documento" in answer.lower()


# 13 -----------------------------------------------------------------------------------------
def test_a_closed_clinic_answers_known_and_unknown_documents_alike(phone, clinic, patient):
    clinic.self_registration = False
    clinic.save(update_fields=["self_registration"])
    known, unknown = phone(ATTACKER), phone(ATTACKER_2)
    assert known.say(ANA_DOC) == unknown.say(UNKNOWN_DOC)
    assert known.say("01/01/1990") == unknown.say("01/01/1990")
    assert not Patient.objects.filter(document=UNKNOWN_DOC).exists()


# 14 -----------------------------------------------------------------------------------------
def test_a_locked_number_cannot_register_or_verify_anyone(phone, patient, other_patient):
    attacker = phone(ATTACKER)
    for document in (ANA_DOC, "79111222", ANA_DOC):
        attacker.say(document)
        attacker.say("01/01/1999")
    assert IdentityLockout.objects.filter(wa_id=ATTACKER, lifted_at=None).exists()
    answer = attacker.say(UNKNOWN_DOC)
    assert "fecha de nacimiento" not in answer
    assert not Patient.objects.filter(document=UNKNOWN_DOC).exists()
