"""Understanding what patients write: documents, dates, yes/no, list choices and intents.

Everything here is deterministic (rules, no LLM) and works on `bot.text.normalize`d text, so
"Sí 👍", "SI", "si dale" and "sii" look alike. Typos in longer words ("siguente", "confimo") are
forgiven with a similarity ratio; short words must match exactly, because "no"/"mas" are too
close to other words to guess.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from enum import StrEnum

from bot.text import normalize

# ---------------------------------------------------------------------------------------------
# Fuzzy word matching


def _similar(word: str, target: str) -> bool:
    """True for the same word or a plausible typo of a long enough word."""
    if word == target:
        return True
    # Typos rarely hit the first letter; requiring it keeps "atras" ≠ "otras".
    if len(target) < 5 or abs(len(word) - len(target)) > 2 or word[:1] != target[:1]:
        return False
    return SequenceMatcher(None, word, target).ratio() >= 0.8


def _has_word(words: list[str], targets: set[str] | tuple[str, ...]) -> bool:
    return any(_similar(w, t) for w in words for t in targets)


def _has_phrase(norm: str, phrases: tuple[str, ...]) -> bool:
    padded = f" {norm} "
    return any(f" {p} " in padded for p in phrases)


# ---------------------------------------------------------------------------------------------
# Documents

_DOC_PREFIX = re.compile(r"\b(?:c\.?\s?c|t\.?\s?i|c\.?\s?e|nit|pp|rc)\.?\s*(?=\d)", re.IGNORECASE)
_DIGIT_GROUPS = re.compile(r"\d+(?:[.\-  ]\d+)*")
_MIXED_TOKEN = re.compile(r"\b(?=\w*\d)(?=\w*[^\W\d_])\w+\b")
# "1985-03-14" or "14.03.1985" has 8 digits but is a date: never read it as a document.
_DATE_SHAPED = re.compile(r"^(?:\d{4}[.\-]\d{1,2}[.\-]\d{1,2}|\d{1,2}[.\-]\d{1,2}[.\-]\d{4})$")


@dataclass(frozen=True)
class DocumentParse:
    """`document` when the text holds one valid number; `invalid` for a failed attempt."""

    document: str | None = None
    invalid: bool = False


def parse_document(text: str) -> DocumentParse:
    """Find an identity document number (8–15 digits) in free text.

    Accepts "1020304050", "1.020.304.050", "1 020 304 050", "CC 1020304050", "c.c. 1020304050".
    A number of the wrong length, or digits mixed with letters ("10203A4050"), is `invalid` so the
    bot can explain the format instead of treating it as small talk.
    """
    cleaned = _DOC_PREFIX.sub(" ", text)
    candidates = [
        re.sub(r"\D", "", m.group())
        for m in _DIGIT_GROUPS.finditer(cleaned)
        if not _DATE_SHAPED.match(m.group())
    ]
    valid = [c for c in candidates if 8 <= len(c) <= 15]
    if len(set(valid)) == 1:
        return DocumentParse(document=valid[0])
    if valid:
        return DocumentParse(invalid=True)  # two different numbers: ask again rather than guess
    if _MIXED_TOKEN.search(cleaned):
        return DocumentParse(invalid=True)
    if any(len(c) >= 5 for c in candidates):
        return DocumentParse(invalid=True)
    return DocumentParse()


# ---------------------------------------------------------------------------------------------
# Dates of birth

MONTHS = {
    "enero": 1,
    "ene": 1,
    "febrero": 2,
    "feb": 2,
    "marzo": 3,
    "mar": 3,
    "abril": 4,
    "abr": 4,
    "mayo": 5,
    "may": 5,
    "junio": 6,
    "jun": 6,
    "julio": 7,
    "jul": 7,
    "agosto": 8,
    "ago": 8,
    "septiembre": 9,
    "setiembre": 9,
    "sep": 9,
    "sept": 9,
    "octubre": 10,
    "oct": 10,
    "noviembre": 11,
    "nov": 11,
    "diciembre": 12,
    "dic": 12,
}

_NUMERIC_DMY = re.compile(r"\b(\d{1,2})\s*[/\-.]\s*(\d{1,2})\s*[/\-.]\s*(\d{4}|\d{2})\b")
_NUMERIC_YMD = re.compile(r"\b(\d{4})\s*[/\-.]\s*(\d{1,2})\s*[/\-.]\s*(\d{1,2})\b")
_WORDS_DMY = re.compile(r"\b(\d{1,2})\s+(?:de\s+)?([a-zñ]+)\s+(?:de\s+|del\s+)?(\d{4})\b")
_WORDS_MDY = re.compile(r"\b([a-zñ]+)\s+(\d{1,2})\s+(?:de\s+|del\s+)?(\d{4})\b")

MAX_AGE_YEARS = 120


class DateProblem(StrEnum):
    NOT_A_DATE = "not_a_date"
    IMPOSSIBLE = "impossible"  # 31/02/1990
    FUTURE = "future"
    TOO_OLD = "too_old"


@dataclass(frozen=True)
class DateParse:
    date: dt.date | None = None
    problem: DateProblem | None = None


def _month(word: str) -> int | None:
    if word in MONTHS:
        return MONTHS[word]
    for name, number in MONTHS.items():
        if len(name) >= 5 and _similar(word, name):
            return number
    return None


def _full_year(year: int, today: dt.date) -> int:
    if year >= 100:
        return year
    # "14/03/85": a two-digit year in the future can only mean the previous century.
    return 2000 + year if 2000 + year <= today.year else 1900 + year


def parse_birth_date(text: str, today: dt.date) -> DateParse:
    """Read a date of birth: 14/03/1985, 14-03-1985, 1985-03-14, 14 de marzo de 1985, 14.03.85.

    Day first, as Colombians write it. Future dates and ages over 120 are rejected.
    """
    raw = text.strip()
    parts: tuple[int, int, int] | None = None
    if m := _NUMERIC_YMD.search(raw):
        parts = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    elif m := _NUMERIC_DMY.search(raw):
        parts = (_full_year(int(m.group(3)), today), int(m.group(2)), int(m.group(1)))
    else:
        norm = normalize(raw)
        if (m := _WORDS_DMY.search(norm)) and (month := _month(m.group(2))):
            parts = (int(m.group(3)), month, int(m.group(1)))
        elif (m := _WORDS_MDY.search(norm)) and (month := _month(m.group(1))):
            parts = (int(m.group(3)), month, int(m.group(2)))
    if parts is None:
        return DateParse(problem=DateProblem.NOT_A_DATE)
    try:
        date = dt.date(*parts)
    except ValueError:
        return DateParse(problem=DateProblem.IMPOSSIBLE)
    if date > today:
        return DateParse(problem=DateProblem.FUTURE)
    if today.year - date.year > MAX_AGE_YEARS:
        return DateParse(problem=DateProblem.TOO_OLD)
    return DateParse(date=date)


# ---------------------------------------------------------------------------------------------
# Names

_NAME = re.compile(r"^[^\W\d_]+(?:[ '\-.][^\W\d_]+)*$")


def parse_full_name(text: str) -> str | None:
    """A plausible full name (at least two words, letters only), tidied into title case."""
    cleaned = " ".join(text.replace(",", " ").split())
    for prefix in ("me llamo ", "mi nombre es ", "soy "):
        if cleaned.casefold().startswith(prefix):
            cleaned = cleaned[len(prefix) :]
    if not (5 <= len(cleaned) <= 120) or not _NAME.match(cleaned) or len(cleaned.split()) < 2:
        return None
    if cleaned.islower() or cleaned.isupper():
        cleaned = " ".join(w.capitalize() for w in cleaned.split())
    return cleaned


def first_names(full_name: str) -> str:
    """How to greet someone: "Ana María Gómez" → "Ana María", "Pedro Ruiz" → "Pedro"."""
    parts = full_name.split()
    # Colombians usually carry two surnames, so with three or more words the first two are names.
    return " ".join(parts[:2]) if len(parts) >= 3 else (parts[0] if parts else "")


# ---------------------------------------------------------------------------------------------
# Yes / no

_YES_EMOJI = ("👍", "✅", "👌", "🙌", "✔")
_NO_EMOJI = ("👎", "❌", "🚫")
_YES_WORDS = {
    "si",
    "sii",
    "siii",
    "sip",
    "ok",
    "oki",
    "okey",
    "okay",
    "dale",
    "listo",
    "claro",
    "bueno",
    "vale",
    "perfecto",
    "confirmo",
    "confirmar",
    "confirmado",
    "confirmada",
    "correcto",
    "exacto",
    "afirmativo",
    "excelente",
    "genial",
    "agendala",
    "agendame",
    "reservala",
    "yes",
}
_YES_PHRASES = ("de una", "esta bien", "por supuesto", "me sirve", "esa esta bien", "hagale")
_NO_WORDS = {"no", "nop", "nope", "nel", "negativo", "otra", "otro", "cambiar", "cambia"}
_NO_PHRASES = ("mejor no", "otra hora", "otro horario", "otra fecha", "otro dia", "mejor otra")


def is_yes(text: str) -> bool:
    if any(e in text for e in _YES_EMOJI):
        return True
    norm = normalize(text)
    words = norm.split()
    if not words or is_no(text):
        return False
    return _has_phrase(norm, _YES_PHRASES) or _has_word(words, _YES_WORDS)


def is_no(text: str) -> bool:
    if any(e in text for e in _NO_EMOJI):
        return True
    norm = normalize(text)
    words = norm.split()
    if not words:
        return False
    # "no" must be a word of its own: "nombre" is not a refusal.
    return _has_phrase(norm, _NO_PHRASES) or any(w in _NO_WORDS for w in words)


# ---------------------------------------------------------------------------------------------
# Choosing from a shown list

ORDINALS = {
    "primero": 1,
    "primera": 1,
    "primer": 1,
    "segundo": 2,
    "segunda": 2,
    "tercero": 3,
    "tercera": 3,
    "tercer": 3,
    "cuarto": 4,
    "cuarta": 4,
    "quinto": 5,
    "quinta": 5,
    "sexto": 6,
    "sexta": 6,
    "septimo": 7,
    "septima": 7,
    "setimo": 7,
    "setima": 7,
    "octavo": 8,
    "octava": 8,
    "noveno": 9,
    "novena": 9,
    "decimo": 10,
    "decima": 10,
}
NUMBER_WORDS = {
    "uno": 1,
    "una": 1,
    "dos": 2,
    "tres": 3,
    "cuatro": 4,
    "cinco": 5,
    "seis": 6,
    "siete": 7,
    "ocho": 8,
    "nueve": 9,
    "diez": 10,
    "once": 11,
    "doce": 12,
}
_LAST = {"ultimo", "ultima"}
_POSITION_FILLERS = {
    "la",
    "el",
    "opcion",
    "numero",
    "num",
    "no",
    "nro",
    "quiero",
    "me",
    "sirve",
    "esa",
    "ese",
    "dame",
    "por",
    "favor",
    "porfa",
    "mejor",
    "si",
    "pues",
    "entonces",
    "escojo",
    "elijo",
    "prefiero",
    "cita",
    "de",
    "lista",
}
_TIME_COLON = re.compile(r"\b(\d{1,2})\s*[:h.]\s*(\d{2})\b")
_TIME_WORDS = re.compile(
    r"\b(?:a las|a la|de las|de la|las)\s+"
    r"(\d{1,2}|una|dos|tres|cuatro|cinco|seis|siete|ocho|nueve|diez|once|doce)(?:\s+y\s+(media|cuarto|\d{1,2}))?\b"
)
_AM_PM = re.compile(r"\b(\d{1,2})(?:\s*[:.]\s*(\d{2}))?\s*([ap])\s*m\b")


@dataclass(frozen=True)
class ShownTime:
    """The local wall-clock time of a shown option, for "el de las 10" / "10:30"."""

    hour: int
    minute: int


def _afternoon(norm: str) -> bool | None:
    if re.search(r"\b(tarde|noche|pm|p m)\b", norm):
        return True
    if re.search(r"\b(mañana|manana|madrugada|am|a m)\b", norm):
        return False
    return None


@dataclass(frozen=True)
class TimeRequest:
    """A wall-clock time the patient named: "las 10" (minute None), "3:20 p. m."."""

    hour: int
    minute: int | None = None
    afternoon: bool | None = None  # True: p. m. / de la tarde; False: a. m.; None: not said


def match_time(request: TimeRequest, times: list[ShownTime], *, strict: bool = False) -> int | None:
    """Index of the first of `times` at the requested time, else None.

    "las 10" means 10:00; only when not `strict` does it settle for another time in that hour.
    """
    hour, minute, afternoon = request.hour, request.minute, request.afternoon
    if afternoon is True and hour < 12:
        candidates = [hour + 12]
    elif afternoon is False:
        candidates = [0 if hour == 12 else hour]
    else:
        # No a.m./p.m.: clinics are open by day, so "las 3" is 15:00 when 3:00 isn't shown.
        candidates = [hour, hour + 12] if hour < 12 else [hour]
    for h in candidates:
        same_hour = [i for i, t in enumerate(times) if t.hour == h]
        if minute is not None:
            exact = [i for i in same_hour if times[i].minute == minute]
            if exact:
                return exact[0]
            continue
        on_the_hour = [i for i in same_hour if times[i].minute == 0]
        if on_the_hour:
            return on_the_hour[0]
        if same_hour and not strict:
            return same_hour[0]
    return None


def parse_time(text: str) -> TimeRequest | None:
    """The time named in "el de las 10", "10:30", "la de las 3 de la tarde", "3 pm"; else None.

    A bare number is not a time here: "10" is the tenth row of a list.
    """
    norm = normalize(text)
    raw = text.casefold()
    afternoon = _afternoon(norm)
    if m := _TIME_COLON.search(raw):
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour <= 23 and minute <= 59:
            return TimeRequest(hour, minute, afternoon)
    if m := _AM_PM.search(re.sub(r"[.\s]", "", raw)):
        hour = int(m.group(1))
        minute = int(m.group(2)) if m.group(2) else None
        if hour <= 12 and (minute is None or minute <= 59):
            return TimeRequest(hour, minute, m.group(3) == "p")
    if m := _TIME_WORDS.search(norm):
        token = m.group(1)
        hour = int(token) if token.isdigit() else NUMBER_WORDS[token]
        minute = None
        if m.group(2) == "media":
            minute = 30
        elif m.group(2) == "cuarto":
            minute = 15
        elif m.group(2):
            minute = int(m.group(2))
        if hour <= 23 and (minute is None or minute <= 59):
            return TimeRequest(hour, minute, afternoon)
    return None


def parse_time_choice(text: str, times: list[ShownTime]) -> int | None:
    """Index of the shown option at the time the patient names ("10:30", "las 3 de la tarde")."""
    request = parse_time(text)
    return match_time(request, times, strict=True) if request else None


def parse_position(text: str, count: int) -> int | None:
    """Index (0-based) for "3", "la 3", "opción 3", "la tercera", "el último", "#3", "tres"."""
    if count <= 0:
        return None
    words = normalize(text).split()
    if not words or len(words) > 6:
        return None
    positions: list[int] = []
    for word in words:
        if word.isdigit():
            positions.append(int(word))
        elif word in NUMBER_WORDS and word not in ("una", "once", "doce"):
            positions.append(NUMBER_WORDS[word])
        elif word in _LAST:
            positions.append(count)
        elif any(_similar(word, o) for o in ORDINALS):
            positions.append(next(v for o, v in ORDINALS.items() if _similar(word, o)))
        elif word not in _POSITION_FILLERS:
            return None  # other words: not a bare choice ("tengo 3 hijos")
    if len(positions) != 1 or not 1 <= positions[0] <= count:
        return None
    return positions[0] - 1


def parse_choice(text: str, times: list[ShownTime]) -> int | None:
    """The option the patient picked from a shown list, by position or by time, else None.

    A bare number is a position ("10" is the tenth row); with "las", a colon or a.m./p.m. it is
    a time ("el de las 10", "10:30", "la de las 3 de la tarde").
    """
    if parse_time(text) is not None:
        # A time not on this page is looked for elsewhere, never read as a row number.
        return parse_time_choice(text, times)
    return parse_position(text, len(times))


# ---------------------------------------------------------------------------------------------
# Paging

_NEXT_WORDS = {
    "mas",
    "siguiente",
    "siguientes",
    "otras",
    "otros",
    "proxima",
    "proximas",
    "ninguna",  # "ninguna me sirve": show the next ones
    "ninguno",
}
_NEXT_PHRASES = ("ver mas", "mas opciones", "mas horarios", "otros horarios", "otras fechas")
_PREV_WORDS = {"anterior", "anteriores", "atras", "devolver", "regresar", "volver"}


def wants_next_page(text: str) -> bool:
    norm = normalize(text)
    words = norm.split()
    if not words or len(words) > 5:
        return False
    return _has_phrase(norm, _NEXT_PHRASES) or _has_word(words, _NEXT_WORDS)


def wants_previous_page(text: str) -> bool:
    words = normalize(text).split()
    return bool(words) and len(words) <= 5 and _has_word(words, _PREV_WORDS)


# ---------------------------------------------------------------------------------------------
# Intents that work in every state


class Intent(StrEnum):
    HUMAN = "human"
    CANCEL = "cancel"
    RESCHEDULE = "reschedule"
    MY_APPOINTMENTS = "my_appointments"
    BOOK = "book"
    ADDRESS = "address"
    HOURS = "hours"
    WHAT_TO_BRING = "what_to_bring"
    PHONE = "phone"
    GOODBYE = "goodbye"
    GREETING = "greeting"
    MENU = "menu"


_HUMAN_WORDS = {"asesor", "asesora", "humano", "humana", "operador", "operadora", "agente"}
_HUMAN_PHRASES = (
    "una persona",
    "un persona",
    "con alguien",
    "persona real",
    "recepcionista",
    "con recepcion",
    "hablar con",
)
_RESCHEDULE_WORDS = {"reprogramar", "reprogramacion", "reagendar", "aplazar", "posponer"}
_RESCHEDULE_PHRASES = (
    "cambiar mi cita",
    "cambiar la cita",
    "cambiar cita",
    "mover mi cita",
    "mover la cita",
    "cambiar la fecha",
    "cambiar de fecha",
    "cambiar la hora",
    "cambiar de hora",
    "correr la cita",
)
_CANCEL_WORDS = {"cancelar", "cancela", "cancelacion", "anular", "anula", "cancelo"}
_CANCEL_PHRASES = ("no puedo ir", "no voy a poder ir", "no podre ir")
_MY_APPOINTMENTS_PHRASES = (
    "mis citas",
    "mi cita",
    "ver citas",
    "tengo cita",
    "tengo citas",
    "citas pendientes",
    "citas agendadas",
    "proxima cita",
    "proximas citas",
)
_BOOK_WORDS = {"agendar", "agenda", "reservar", "pedir", "sacar", "solicitar", "apartar"}
_BOOK_PHRASES = ("nueva cita", "una cita", "otra cita", "quiero cita", "necesito cita")
_ADDRESS_PHRASES = (
    "direccion",
    "donde quedan",
    "donde queda",
    "donde estan",
    "donde esta",
    "ubicacion",
    "ubicados",
    "como llego",
    "como llegar",
)
_HOURS_PHRASES = (
    "horario",
    "horarios de atencion",
    "a que hora abren",
    "a que horas abren",
    "hora abren",
    "hora cierran",
    "que horas atienden",
    "que hora atienden",
    "abren",
    "cierran",
)
_BRING_PHRASES = (
    "que debo llevar",
    "que llevo",
    "que tengo que llevar",
    "que hay que llevar",
    "debo llevar",
    "que traer",
    "que debo traer",
    "que necesito llevar",
    "documentos necesito",
)
_PHONE_PHRASES = ("telefono", "numero de contacto", "a que numero", "celular de la clinica")
_GOODBYE_WORDS = {"gracias", "chao", "chau", "adios", "bye", "graciass", "mil"}
_GOODBYE_PHRASES = ("hasta luego", "nos vemos", "eso es todo", "muchas gracias", "buen dia")
_GREETING_WORDS = {"hola", "buenas", "buenos", "saludos", "hello", "hi", "ola", "holi"}
_MENU_WORDS = {"menu", "ayuda", "opciones", "inicio", "empezar"}
_FILLER = {
    "dias",
    "tardes",
    "noches",
    "muy",
    "amable",
    "por",
    "todo",
    "que",
    "tenga",
    "tengas",
    "buen",
    "dia",
    "feliz",
    "muchas",
    "mil",
    "ok",
    "listo",
    "bueno",
    "vale",
    "perfecto",
    "super",
    "sophia",
}


def detect_intent(text: str) -> Intent | None:
    """The one global intent in a message, most specific first, or None."""
    norm = normalize(text)
    words = norm.split()
    if not words:
        return None
    if _has_word(words, _HUMAN_WORDS) or _has_phrase(norm, _HUMAN_PHRASES):
        return Intent.HUMAN
    if _has_word(words, _RESCHEDULE_WORDS) or _has_phrase(norm, _RESCHEDULE_PHRASES):
        return Intent.RESCHEDULE
    if _has_word(words, _CANCEL_WORDS) or _has_phrase(norm, _CANCEL_PHRASES):
        return Intent.CANCEL
    if _has_phrase(norm, _MY_APPOINTMENTS_PHRASES) and not _has_word(words, _BOOK_WORDS):
        return Intent.MY_APPOINTMENTS
    if _has_phrase(norm, _ADDRESS_PHRASES):
        return Intent.ADDRESS
    if _has_phrase(norm, _BRING_PHRASES):
        return Intent.WHAT_TO_BRING
    if _has_phrase(norm, _HOURS_PHRASES):
        return Intent.HOURS
    if _has_phrase(norm, _PHONE_PHRASES):
        return Intent.PHONE
    if _has_word(words, _BOOK_WORDS) or _has_phrase(norm, _BOOK_PHRASES):
        return Intent.BOOK
    # "gracias", "chao", and "no gracias" outside a yes/no question: the patient is done.
    rest = [w for w in words if w not in _FILLER and w != "no"]
    if rest and all(_has_word([w], _GOODBYE_WORDS) for w in rest):
        return Intent.GOODBYE
    if len(words) <= 4 and _has_word(words, _MENU_WORDS):
        return Intent.MENU
    if len(words) <= 4 and all(w in _GREETING_WORDS or w in _FILLER for w in words):
        return Intent.GREETING
    return None


# ---------------------------------------------------------------------------------------------
# Specialty names typed directly ("odontología", "quiero el dermatólogo")


def specialty_stem(name: str) -> str:
    first = normalize(name).split()
    return first[0][:6] if first else ""


def match_specialty_name(text: str, names: dict[str, str]) -> str | None:
    """The slug whose name the patient typed (by a 6-letter stem), when exactly one matches."""
    words = normalize(text).split()
    hits = {
        slug
        for slug, name in names.items()
        if (stem := specialty_stem(name))
        and len(stem) >= 5
        and any(w.startswith(stem) for w in words)
    }
    return hits.pop() if len(hits) == 1 else None


# --- who an appointment is for ---------------------------------------------------------------

_RELATIVES = (
    r"hij[oa]s?|hijit[oa]s?|nin[oa]s?|bebe|bebes|nene|nena|mama|papa|madre|padre|"
    r"espos[oa]|abuel[oa]|abuelit[oa]|herman[oa]|herman[oa]s|sobrin[oa]|niet[oa]|tia|tio|"
    r"suegr[oa]|pareja|novi[oa]"
)
# "para mi hijo", "es para mi mamá", "mi bebé tiene fiebre", "para otra persona", "mi hija
# está con tos": the appointment is someone else's. Linear: one alternation at word starts.
_SOMEONE_ELSE = re.compile(
    rf"\b(?:para (?:mi|mis|el|la|nuestro|nuestra) (?:{_RELATIVES})\b"
    rf"|(?:mi|mis|nuestro|nuestra) (?:{_RELATIVES}) (?:tiene|esta|le|se|ha|anda|amanecio)\b"
    r"|para otra persona\b|no es para mi\b)"
)
_FOR_ME = re.compile(r"^(?:(?:es )?para mi(?: misma?| mismo)?|yo|soy yo|a mi|mia|mio)$")


def for_someone_else(text: str) -> bool:
    """Does the message say the appointment is for someone else (a child, a relative)?"""
    return bool(_SOMEONE_ELSE.search(normalize(text)))


def means_myself(text: str) -> bool:
    """ "para mí", "yo", "es para mí mismo": the appointment is the writer's own."""
    return bool(_FOR_ME.match(normalize(text)))


def means_someone_else_option(text: str) -> bool:
    """ "otra persona", "otro", "alguien más": the list's "Someone else" typed."""
    return normalize(text) in {"otra persona", "otra", "otro", "alguien mas", "otra persona mas"}
