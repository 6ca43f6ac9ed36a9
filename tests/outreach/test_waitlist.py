"""The waitlist: a freed slot is offered in order, the first to accept gets it, the others are
told; unanswered offers move on; two patients racing for one slot get exactly one booking."""

import datetime as dt
import threading

import pytest
import time_machine
from django.db import connection
from django_tasks_db.models import DBTaskResult

from bot.models import Conversation
from clinics import services
from clinics.models import Appointment, AppointmentStatus, Doctor
from outreach import waitlist
from outreach.models import OutreachSettings, PartOfDay, WaitlistEntry, WaitlistOffer
from outreach.waitlist import OfferOutcome
from tests.conftest import make_slots
from tests.fakes import graph_server
from tests.outreach.conftest import MONDAY_10AM, WEDNESDAY, book, local, make_patient

fake_graph = graph_server.fake_graph  # the fixture

OFFER_TASK = "outreach.waitlist.offer_freed_slot"


def join(clinic, patient, specialty, clock=None, **wishes) -> WaitlistEntry:
    entry, created = waitlist.waitlist_join(
        clinic=clinic, patient=patient, specialty=specialty, **wishes
    )
    assert created
    if clock is not None:
        clock.shift(dt.timedelta(minutes=1))  # the next one joins a minute later
    return entry


def offers_sent(fake_graph) -> dict[str, dict]:
    """Offer messages by recipient (templates: nobody wrote in the last 24 hours)."""
    return {
        r.to: r.json
        for r in fake_graph.requests
        if r.json.get("type") == "template" and r.json["template"]["name"] == "cupo_lista_espera"
    }


def payload(template_json: dict, index: int) -> str:
    return template_json["template"]["components"][1 + index]["parameters"][0]["payload"]


def offer_of(patient) -> WaitlistOffer:
    return WaitlistOffer.objects.select_related("message").get(entry__patient=patient)


def answer(clinic, offer: WaitlistOffer, *, accept: bool):
    respond = waitlist.waitlist_accept if accept else waitlist.waitlist_decline
    return respond(clinic=clinic, offer_id=offer.pk, conversation_id=offer.message.conversation_id)


@pytest.fixture
def full_wednesday(clock, clinic, wednesday_slots):
    """Every Wednesday slot booked by someone; the waitlist is the only way in."""
    return [
        book(clinic, make_patient(clinic, 100 + n), slot) for n, slot in enumerate(wednesday_slots)
    ]


@pytest.fixture
def waiting(clock, clinic, specialty, doctor, full_wednesday):
    """Five patients joined a minute apart: p0 (oldest) … p4. p1 wants another doctor, p2 only
    afternoons; the others take anything."""
    other_doctor = Doctor.objects.create(clinic=clinic, full_name="Dra. Ruiz")
    other_doctor.specialties.add(specialty)
    patients = [make_patient(clinic, n) for n in range(5)]
    wishes = [{}, {"doctor": other_doctor}, {"part_of_day": PartOfDay.AFTERNOON}, {}, {}]
    for patient, wish in zip(patients, wishes, strict=True):
        join(clinic, patient, specialty, clock, **wish)
    return patients


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Call a service and run what it left for after commit (delivery), as a real commit would."""

    def run(function, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return function(*args, **kwargs)

    return run


def cancel(clinic, appointment: Appointment) -> None:
    services.appointment_cancel(
        clinic=clinic, appointment_id=appointment.pk, actor=services.Actor.system("test")
    )


@pytest.mark.django_db
def test_it_offers_a_freed_slot_to_the_longest_waiting_matching_patients_in_order(
    clock, clinic, waiting, full_wednesday, fake_graph, commit
):
    OutreachSettings.objects.create(clinic=clinic, waitlist_batch=2, waitlist_offer_minutes=30)
    freed = full_wednesday[6]  # 09:00, Dr. Carlos García, morning
    cancel(clinic, freed)
    assert commit(waitlist.waitlist_offer_slot, slot_id=freed.slot_id) == 2

    p0, _p1, _p2, p3, _p4 = waiting
    offered = WaitlistOffer.objects.order_by("created_at", "entry__created_at")
    assert [o.entry.patient for o in offered] == [p0, p3]  # p1: other doctor, p2: afternoons
    sent = offers_sent(fake_graph)
    assert set(sent) == {p0.whatsapp_id, p3.whatsapp_id}
    params = [p["text"] for p in sent[p0.whatsapp_id]["template"]["components"][0]["parameters"]]
    assert params == [
        "Medicina General",
        "miércoles 9 de diciembre",
        "9:00 a. m.",
        "Dr. Carlos García",
    ]
    offer = offer_of(p0)
    assert payload(sent[p0.whatsapp_id], 0) == f"waitlist:accept:{offer.pk}"
    assert payload(sent[p0.whatsapp_id], 1) == f"waitlist:decline:{offer.pk}"
    assert offer.expires_at == MONDAY_10AM + dt.timedelta(minutes=5 + 30)

    # Offering the same slot again sends nothing more: the batch is full.
    assert commit(waitlist.waitlist_offer_slot, slot_id=freed.slot_id) == 0


@pytest.mark.django_db
def test_it_gives_the_slot_to_the_first_who_accepts_and_tells_the_others_kindly(
    clock, clinic, waiting, full_wednesday, fake_graph, commit
):
    OutreachSettings.objects.create(clinic=clinic, waitlist_batch=3)
    freed = full_wednesday[6]
    cancel(clinic, freed)
    commit(waitlist.waitlist_offer_slot, slot_id=freed.slot_id)
    p0, _p1, _p2, p3, p4 = waiting

    first = commit(answer, clinic, offer_of(p3), accept=True)
    assert first.outcome == OfferOutcome.BOOKED
    assert first.appointment.patient == p3
    assert first.appointment.slot_id == freed.slot_id
    assert first.appointment.status == AppointmentStatus.BOOKED
    entry = WaitlistEntry.objects.get(patient=p3)
    assert (entry.status, entry.appointment) == ("booked", first.appointment)

    for loser in (p0, p4):
        assert offer_of(loser).status == WaitlistOffer.Status.TAKEN
        (notice,) = [
            r for r in fake_graph.messages_to(loser.whatsapp_id) if r.json["type"] == "text"
        ]
        assert "otra persona tomó ese horario" in notice.text
        assert WaitlistEntry.objects.get(patient=loser).status == "waiting"  # keeps their place

    late = commit(answer, clinic, offer_of(p0), accept=True)
    assert late.outcome == OfferOutcome.TAKEN
    assert (
        Appointment.objects.filter(slot_id=freed.slot_id).exclude(status="cancelled").count() == 1
    )


@pytest.mark.django_db(transaction=True)
def test_it_books_exactly_one_of_two_patients_racing_for_the_slot(
    clinic, specialty, doctor, fake_graph
):
    with time_machine.travel(MONDAY_10AM, tick=False) as clock:
        slots = make_slots(doctor, local(WEDNESDAY, 7), 3)
        taken = [book(clinic, make_patient(clinic, 100 + n), s) for n, s in enumerate(slots)]
        racers = [make_patient(clinic, n) for n in range(2)]
        for patient in racers:
            join(clinic, patient, specialty, clock)
        cancel(clinic, taken[1])
        assert waitlist.waitlist_offer_slot(slot_id=taken[1].slot_id) == 2
        offers = [offer_of(p) for p in racers]

        barrier = threading.Barrier(2)
        outcomes = {}

        def accept(offer) -> None:
            try:
                barrier.wait()
                outcomes[offer.entry.patient_id] = answer(clinic, offer, accept=True).outcome
            finally:
                connection.close()

        threads = [threading.Thread(target=accept, args=(o,)) for o in offers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert sorted(outcomes.values()) == [OfferOutcome.BOOKED, OfferOutcome.TAKEN]
    winner = next(pid for pid, outcome in outcomes.items() if outcome == OfferOutcome.BOOKED)
    loser = next(p for p in racers if p.pk != winner)
    active = Appointment.objects.filter(slot_id=taken[1].slot_id).exclude(status="cancelled")
    assert [a.patient_id for a in active] == [winner]
    # The loser is told: a kind word in their conversation (and their own tap's answer).
    notices = [r for r in fake_graph.messages_to(loser.whatsapp_id) if r.json["type"] == "text"]
    assert len(notices) == 1
    assert WaitlistEntry.objects.get(patient=loser).status == "waiting"


@pytest.mark.django_db
def test_it_moves_on_to_the_next_patient_when_one_declines(
    clock, clinic, waiting, full_wednesday, fake_graph, commit
):
    OutreachSettings.objects.create(clinic=clinic, waitlist_batch=1)
    freed = full_wednesday[6]
    cancel(clinic, freed)
    commit(waitlist.waitlist_offer_slot, slot_id=freed.slot_id)
    p0, _p1, _p2, p3, _p4 = waiting
    DBTaskResult.objects.all().delete()

    assert commit(answer, clinic, offer_of(p0), accept=False).outcome == OfferOutcome.DECLINED
    (task,) = DBTaskResult.objects.ready().filter(task_path=OFFER_TASK)
    assert task.args_kwargs["args"] == [freed.slot_id]
    assert commit(waitlist.waitlist_offer_slot, slot_id=freed.slot_id) == 1
    assert offer_of(p3).status == WaitlistOffer.Status.PENDING
    assert WaitlistEntry.objects.get(patient=p0).status == "waiting"
    # Declining twice, or accepting after declining, changes nothing.
    assert commit(answer, clinic, offer_of(p0), accept=True).outcome == OfferOutcome.GONE


@pytest.mark.django_db
def test_it_lets_an_unanswered_offer_lapse_and_offers_the_slot_to_the_next(
    clock, clinic, waiting, full_wednesday, fake_graph, commit
):
    OutreachSettings.objects.create(clinic=clinic, waitlist_batch=1, waitlist_offer_minutes=30)
    freed = full_wednesday[6]
    cancel(clinic, freed)
    commit(waitlist.waitlist_offer_slot, slot_id=freed.slot_id)
    p0, _p1, _p2, p3, _p4 = waiting

    clock.shift(dt.timedelta(minutes=29))
    assert commit(waitlist.waitlist_sweep) == 0
    clock.shift(dt.timedelta(minutes=2))
    assert commit(waitlist.waitlist_sweep) == 2  # one expired, one new offer
    assert offer_of(p0).status == WaitlistOffer.Status.EXPIRED
    assert offer_of(p3).status == WaitlistOffer.Status.PENDING
    assert commit(answer, clinic, offer_of(p0), accept=True).outcome == OfferOutcome.GONE


@pytest.mark.django_db
def test_it_offers_slots_that_appear_after_joining_but_not_those_free_before(
    clock, clinic, specialty, doctor, patient, wednesday_slots, fake_graph, commit
):
    join(clinic, patient, specialty, clock, part_of_day=PartOfDay.AFTERNOON)
    assert commit(waitlist.waitlist_match) == 0  # the morning slots don't suit; nothing new
    clock.shift(dt.timedelta(hours=1))
    afternoon = make_slots(doctor, local(WEDNESDAY, 15), 2)  # the doctor's new afternoon agenda
    assert commit(waitlist.waitlist_match) == 1
    offer = offer_of(patient)
    assert offer.slot == afternoon[0]
    assert commit(waitlist.waitlist_match) == 0  # an open offer: nothing more until it is answered


@pytest.mark.django_db
def test_it_sends_buttons_instead_of_a_template_inside_the_24_hour_window(
    clock, clinic, specialty, patient, full_wednesday, fake_graph, commit
):
    conversation = Conversation.objects.create(
        clinic=clinic, wa_id=patient.whatsapp_id, patient=patient, last_inbound_at=MONDAY_10AM
    )
    join(clinic, patient, specialty, clock, conversation=conversation)
    cancel(clinic, full_wednesday[0])
    assert commit(waitlist.waitlist_offer_slot, slot_id=full_wednesday[0].slot_id) == 1
    (sent,) = fake_graph.messages_to(patient.whatsapp_id)
    offer = offer_of(patient)
    assert [b["id"] for b in sent.buttons] == [
        f"waitlist:accept:{offer.pk}",
        f"waitlist:decline:{offer.pk}",
    ]
    assert "lista de espera" in sent.text


@pytest.mark.django_db
def test_it_ignores_answers_from_a_conversation_that_did_not_get_the_offer(
    clock, clinic, other_clinic, waiting, full_wednesday, fake_graph, commit
):
    cancel(clinic, full_wednesday[6])
    commit(waitlist.waitlist_offer_slot, slot_id=full_wednesday[6].slot_id)
    offer = offer_of(waiting[0])
    stranger = Conversation.objects.create(clinic=clinic, wa_id="573119998877")
    for clinic_, conversation_id in (
        (clinic, stranger.pk),
        (other_clinic, offer.message.conversation_id),
    ):
        result = waitlist.waitlist_accept(
            clinic=clinic_, offer_id=offer.pk, conversation_id=conversation_id
        )
        assert result.outcome == OfferOutcome.NOT_FOUND
    assert offer_of(waiting[0]).status == WaitlistOffer.Status.PENDING


@pytest.mark.django_db
def test_it_keeps_one_entry_per_patient_and_specialty_and_refuses_other_clinics(
    clinic, other_clinic, specialty, patient
):
    entry, created = waitlist.waitlist_join(clinic=clinic, patient=patient, specialty=specialty)
    again, created_again = waitlist.waitlist_join(
        clinic=clinic, patient=patient, specialty=specialty, part_of_day=PartOfDay.MORNING
    )
    assert created and not created_again
    assert again.pk == entry.pk and again.part_of_day == PartOfDay.MORNING
    with pytest.raises(services.WrongClinic):
        waitlist.waitlist_join(clinic=other_clinic, patient=patient, specialty=specialty)
    with pytest.raises(services.InvalidInput):
        waitlist.waitlist_join(
            clinic=clinic, patient=patient, specialty=specialty, part_of_day="midnight"
        )
    removed = waitlist.waitlist_remove(clinic=clinic, entry_id=entry.pk)
    assert removed.status == "removed"
    with pytest.raises(services.InvalidInput):
        waitlist.waitlist_remove(clinic=other_clinic, entry_id=entry.pk)


@pytest.mark.django_db(transaction=True)
def test_it_queues_an_offer_task_when_a_cancellation_frees_a_slot(clinic, patient, slots):
    appointment = book(clinic, patient, slots[0])
    DBTaskResult.objects.all().delete()
    cancel(clinic, appointment)
    (task,) = DBTaskResult.objects.ready().filter(task_path=OFFER_TASK)
    assert task.args_kwargs["args"] == [slots[0].pk]
    assert (
        DBTaskResult.objects.ready()
        .filter(task_path="outreach.reminders.withdraw_reminders")
        .exists()
    )
