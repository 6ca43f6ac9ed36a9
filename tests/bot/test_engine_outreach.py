"""The engine's side of reminders and the waitlist, without a database (tests/bot/memory_gateway):
Confirm / Cancel taps and "confirmo" / "cancelar", STOP, the waitlist offered when no slot fits,
and answers to waitlist offers."""

from __future__ import annotations

from bot.engine import State
from tests.bot.test_engine_transitions import ANA_DOCUMENT, World, world

__all__ = ["world"]


def buttons(w: World) -> list[str]:
    return [b.id for r in w.result.replies for b in r.buttons]


def reminded(w: World) -> int:
    appointment_id = w.gateway.book(w.ana_id, w.dental_slots[2], w.dental.id)
    w.gateway.remind(appointment_id)
    return appointment_id


def test_it_confirms_an_appointment_from_the_reminders_button(world):
    appointment_id = reminded(world)
    world.tap(f"reminder:confirm:{appointment_id}", "Confirmar")
    assert "quedó confirmada" in world.text
    assert world.gateway.appointments[appointment_id].status == "confirmed"
    assert world.state == State.START  # a reminder answer needs no identification and no flow
    world.tap(f"reminder:confirm:{appointment_id}", "Confirmar")
    assert "ya estaba confirmada" in world.text


def test_it_cancels_an_appointment_from_the_reminders_button(world):
    appointment_id = reminded(world)
    world.tap(f"reminder:cancel:{appointment_id}", "Cancelar")
    assert "quedó cancelada" in world.text
    assert world.gateway.appointments[appointment_id].status == "cancelled"
    world.tap(f"reminder:confirm:{appointment_id}", "Confirmar")
    assert "ya estaba cancelada" in world.text


def test_it_refuses_a_reminder_payload_this_conversation_never_received(world):
    appointment_id = world.gateway.book(world.ana_id, world.dental_slots[2], world.dental.id)
    world.tap(f"reminder:cancel:{appointment_id}", "Cancelar")
    assert "No encontramos ese recordatorio" in world.text
    assert world.gateway.appointments[appointment_id].status == "booked"


def test_it_reads_confirmo_and_cancelar_as_answers_to_an_open_reminder(world):
    appointment_id = reminded(world)
    world.send("Confirmo")
    assert "quedó confirmada" in world.text
    world.send("cancelar")
    assert world.gateway.appointments[appointment_id].status == "cancelled"


def test_it_leaves_cancelar_to_the_usual_flow_without_an_open_reminder(world):
    world.send(ANA_DOCUMENT)
    world.gateway.book(world.ana_id, world.dental_slots[2], world.dental.id)
    world.send("cancelar")
    assert "reminder_answer" not in world.gateway.writes()
    assert world.state == State.CANCELLING


def test_it_keeps_confirmo_for_the_booking_being_confirmed(world):
    reminded(world)
    world.send(ANA_DOCUMENT)
    world.send("tengo fiebre")
    world.send("1")
    assert world.state == State.CONFIRMING
    world.send("confirmo")
    assert world.state == State.BOOKED
    assert "reminder_answer" not in world.gateway.writes()


def test_it_stops_and_resumes_reminders_on_request(world):
    world.send("STOP")
    assert "no te enviaremos más recordatorios" in world.text
    assert world.wa_id in world.gateway.reminders_stopped
    world.send("No quiero recordatorios!")
    assert world.wa_id in world.gateway.reminders_stopped
    world.send("quiero recordatorios")
    assert "te volveremos a recordar" in world.text
    assert world.wa_id not in world.gateway.reminders_stopped


def test_it_offers_the_waitlist_when_no_slot_fits_and_joins_it(world):
    world.send(ANA_DOCUMENT)
    world.send("me salieron manchas en la piel")  # dermatología: no slots at all
    assert "waitlist:join:dermatologia" in buttons(world)
    world.tap("waitlist:join:dermatologia", "Entrar a la lista")
    assert "Quedaste en la lista de espera de Dermatología" in world.text
    dermatology = world.gateway.specialty("dermatologia")
    assert world.gateway.waitlist == [(world.ana_id, dermatology.id, None, "any")]
    world.tap("waitlist:join:dermatologia", "Entrar a la lista")
    assert "Ya estás en la lista" in world.text
    world.tap("waitlist:no", "No, gracias")
    assert "agendar" in world.text


def test_it_asks_an_unidentified_patient_to_identify_before_joining(world):
    world.tap("waitlist:join:dermatologia", "Entrar a la lista")
    assert world.gateway.waitlist == []
    assert "documento" in world.text


def test_it_books_a_waitlist_offer_on_accept_and_says_so_when_it_was_taken(world):
    offer_id = world.gateway.offer(world.general_slots[0], world.ana_id)
    world.tap(f"waitlist:accept:{offer_id}", "Sí, lo quiero")
    assert "¡Es tuyo!" in world.text
    taken = world.gateway.offer(world.general_slots[0], world.ana_id)
    world.tap(f"waitlist:accept:{taken}", "Sí, lo quiero")
    assert "otra persona tomó ese horario" in world.text
    declined = world.gateway.offer(world.general_slots[1], world.ana_id)
    world.tap(f"waitlist:decline:{declined}", "No, gracias")
    assert "se lo ofreceremos a otra persona" in world.text
    world.tap(f"waitlist:accept:{declined}", "Sí, lo quiero")
    assert "ya no está disponible" in world.text


def test_it_offers_the_waitlist_for_the_part_of_the_day_nothing_was_free(world):
    world.send(ANA_DOCUMENT)
    world.send("me duele una muela")  # odontología: three slots, all in the afternoon
    world.send("en la mañana")
    join = next(b for b in buttons(world) if b.startswith("waitlist:join:"))
    assert join == "waitlist:join:odontologia::morning"
    world.tap(join, "Entrar a la lista")
    assert world.gateway.waitlist == [(world.ana_id, world.dental.id, None, "morning")]
