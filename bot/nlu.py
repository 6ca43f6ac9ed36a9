"""Understanding what patients write: documents, dates, yes/no, list choices and intents.

Everything here is deterministic (rules, no LLM) and works on `bot.text.normalize`d text, so
"Sí 👍", "SI", "si dale" and "sii" look alike. Typos in longer words ("siguente", "confimo") are
forgiven with a similarity ratio; short words must match exactly, because "no"/"mas" are too
close to other words to guess.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from enum import StrEnum

from bot.text import MAX_TEXT, normalize, strip_accents
from clinics.identifiers import is_document

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
# Digits and the separators people put between them; no repeat inside a repeat, so linear.
_DIGIT_GROUPS = re.compile(r"\d(?:\d|[.\-  ](?=\d))*")
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
    cleaned = _DOC_PREFIX.sub(" ", text[:MAX_TEXT])
    candidates = [
        re.sub(r"\D", "", m.group())
        for m in _DIGIT_GROUPS.finditer(cleaned)
        if not _DATE_SHAPED.match(m.group())
    ]
    valid = [c for c in candidates if is_document(c)]
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
_SPACED_DMY = re.compile(r"^(\d{1,2}) (\d{1,2}) (\d{4}|\d{2})$")
# "14 del 3 del 85", "14 de 03 de 1985"
_NUMBERS_WITH_DE = re.compile(r"\b(\d{1,2}) del? (\d{1,2}) del? (\d{4}|\d{2})\b")
# "14031985": eight digits written together, day first
_COMPACT_DMY = re.compile(r"^(\d{2})(\d{2})((?:19|20)\d{2})$")
# On normalised text (single spaces): "14 de marzo del 85", "marzo 14 de 1985", "14 marzo 85".
_WORDS_DMY = re.compile(r"\b(\d{1,2}) (?:de )?([a-zñ]+) (?:de |del )?(?:ano )?(\d{4}|\d{2})\b")
_WORDS_MDY = re.compile(r"\b([a-zñ]+) (\d{1,2}) (?:de |del )?(\d{4}|\d{2})\b")
_WORDS_DM = re.compile(r"\b(\d{1,2}) (?:de )?([a-zñ]+)\b")
_YEAR_ONLY = re.compile(r"\b(?:19|20)\d{2}\b")

MAX_AGE_YEARS = 120
# A birth date fits in a few words; a long text is not one.
MAX_DATE_CHARS = 120


class DateProblem(StrEnum):
    NOT_A_DATE = "not_a_date"
    IMPOSSIBLE = "impossible"  # 31/02/1990
    FUTURE = "future"
    TOO_OLD = "too_old"
    INCOMPLETE = "incomplete"  # "14 de marzo", "marzo del 85": the day, month or year is missing
    AMBIGUOUS = "ambiguous"  # "3/4/26": 1926 or 2026? `candidates` says which ones


@dataclass(frozen=True)
class DateParse:
    date: dt.date | None = None
    problem: DateProblem | None = None
    candidates: tuple[dt.date, ...] = ()


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


def _checked(parts: tuple[int, int, int], today: dt.date, two_digit_year: bool) -> DateParse:
    year, month, day = parts
    try:
        date = dt.date(year, month, day)
    except ValueError:
        return DateParse(problem=DateProblem.IMPOSSIBLE)
    if date > today:
        return DateParse(problem=DateProblem.FUTURE)
    if today.year - date.year > MAX_AGE_YEARS:
        return DateParse(problem=DateProblem.TOO_OLD)
    if two_digit_year and year >= 2000:
        # "3/4/26" in 2026: a baby, or someone born in 1926? Both are possible: ask.
        with contextlib.suppress(ValueError):
            older = date.replace(year=year - 100)
            if today.year - older.year <= 100:
                return DateParse(problem=DateProblem.AMBIGUOUS, candidates=(date, older))
    return DateParse(date=date)


def parse_birth_date(text: str, today: dt.date) -> DateParse:
    """Read a date of birth as people write it: 14/03/1985, 14/3/85, 14-03-1985, 1985-03-14,
    14 de marzo de 1985, 14 de marzo del 85, marzo 14 1985, 14 03 1985.

    Day first, as Colombians write it, unless the second number can only be a day
    (03/14/1985). Future dates and ages over 120 are rejected; a date without its year or day
    is INCOMPLETE and a two-digit year that fits two centuries AMBIGUOUS, so the bot can ask.
    """
    raw = text[:MAX_TEXT].strip()[:MAX_DATE_CHARS]
    norm = normalize(raw)
    if m := _NUMERIC_YMD.search(raw):
        return _checked((int(m.group(1)), int(m.group(2)), int(m.group(3))), today, False)
    numeric = (
        _NUMERIC_DMY.search(raw)
        or _SPACED_DMY.match(norm)
        or _NUMBERS_WITH_DE.search(norm)
        or _COMPACT_DMY.match(norm)
    )
    if numeric:
        first, second, year = (int(numeric.group(i)) for i in (1, 2, 3))
        if second > 12 >= first:
            first, second = second, first  # 03/14/1985 can only be month/day
        return _checked((_full_year(year, today), second, first), today, year < 100)
    if (m := _WORDS_DMY.search(norm)) and (month := _month(m.group(2))):
        year = int(m.group(3))
        return _checked((_full_year(year, today), month, int(m.group(1))), today, year < 100)
    if (m := _WORDS_MDY.search(norm)) and (month := _month(m.group(1))):
        year = int(m.group(3))
        return _checked((_full_year(year, today), month, int(m.group(2))), today, year < 100)
    if (m := _WORDS_DM.search(norm)) and _month(m.group(2)):
        return DateParse(problem=DateProblem.INCOMPLETE)
    words = norm.split()
    if _YEAR_ONLY.search(norm) or any(_month(w) for w in words if len(w) >= 4):
        return DateParse(problem=DateProblem.INCOMPLETE)
    return DateParse(problem=DateProblem.NOT_A_DATE)


# ---------------------------------------------------------------------------------------------
# Names

# Letters, with single spaces, apostrophes, hyphens or dots between them.
_NAME = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ '\-.](?=[^\W\d_]))*$")


def parse_full_name(text: str) -> str | None:
    """A plausible full name (at least two words, letters only), tidied into title case."""
    cleaned = " ".join(text[:MAX_TEXT].replace(",", " ").split())
    for prefix in ("me llamo ", "mi nombre es ", "soy "):
        if cleaned.casefold().startswith(prefix):
            cleaned = cleaned[len(prefix) :]
    if not (5 <= len(cleaned) <= 120) or not _NAME.match(cleaned) or len(cleaned.split()) < 2:
        return None
    if looks_like_symptoms(cleaned):
        return None  # "me duele el oído y me zumba" is not anyone's name
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
    text = text[:MAX_TEXT]
    if any(e in text for e in _YES_EMOJI):
        return True
    norm = normalize(text)
    words = norm.split()
    if not words or is_no(text):
        return False
    return _has_phrase(norm, _YES_PHRASES) or _has_word(words, _YES_WORDS)


def is_no(text: str) -> bool:
    text = text[:MAX_TEXT]
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
    raw = text[:MAX_TEXT].casefold()
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


# ---------------------------------------------------------------------------------------------
# When: the day and time a patient asks for ("el viernes en la tarde", "después de las 5")

# Longer texts are not requests for a time; a bound keeps every scan below cheap.
MAX_WHEN_CHARS = 300

WEEKDAYS = {
    "lunes": 0,
    "martes": 1,
    "miercoles": 2,
    "jueves": 3,
    "viernes": 4,
    "sabado": 5,
    "sabados": 5,
    "domingo": 6,
    "domingos": 6,
}


class PartOfDay(StrEnum):
    MORNING = "morning"
    MIDDAY = "midday"
    AFTERNOON = "afternoon"
    EVENING = "evening"


# Local wall-clock windows of the slot's start; the end is exclusive (None: until midnight).
PART_OF_DAY_HOURS: dict[PartOfDay, tuple[dt.time, dt.time | None]] = {
    PartOfDay.MORNING: (dt.time(0), dt.time(12)),
    PartOfDay.MIDDAY: (dt.time(11), dt.time(14)),
    PartOfDay.AFTERNOON: (dt.time(12), dt.time(18)),
    PartOfDay.EVENING: (dt.time(17), None),
}
_PART_WORDS = {
    "manana": PartOfDay.MORNING,
    "mananas": PartOfDay.MORNING,
    "mananita": PartOfDay.MORNING,
    "tardecita": PartOfDay.AFTERNOON,
    "nochecita": PartOfDay.EVENING,
    "tarde": PartOfDay.AFTERNOON,
    "tardes": PartOfDay.AFTERNOON,
    "noche": PartOfDay.EVENING,
    "noches": PartOfDay.EVENING,
}
_PART_CUES = {"la", "las", "en", "por", "de"}

_EARLIEST_PHRASES = (
    "lo mas pronto",
    "mas pronto posible",
    "lo antes posible",
    "cuanto antes",
    "la mas temprana",
    "el mas temprano",
    "la mas temprano",
    "lo mas temprano",
    "la mas cercana",
    "el mas cercano",
    "la mas proxima",
    "la primera disponible",
    "la primera que haya",
    "la primera que tengan",
    "primera cita disponible",
    "lo mas rapido",
    "la mas rapida",
    "apenas haya",
)
_NOT_THAT_DAY_PHRASES = (
    "no puedo ese dia",
    "ese dia no",
    "no me sirve ese dia",
    "no puedo ese",
    "ese dia tengo",
    "otro dia",
    "otra fecha",
    "no puedo ese dia",
    "no puedo en ese dia",
)
_NEXT_WEEK_PHRASES = (
    "proxima semana",
    "otra semana",
    "semana que viene",
    "siguiente semana",
    "semana entrante",
    "semana proxima",
)
_THIS_WEEK_PHRASES = ("esta semana", "en la semana")
_WEEKEND_PHRASES = ("fin de semana", "el finde", "este finde")
_NEXT_MONTH_PHRASES = ("proximo mes", "mes que viene", "siguiente mes", "mes entrante")
_AFTER_CUES = (("despues", "de"), ("a", "partir", "de"), ("desde",), ("luego", "de"))
_BEFORE_CUES = (("antes", "de"), ("hasta",), ("maximo", "a"))
_CLOCK_CHARS = re.compile(r"[^a-z0-9ñ:/\s]")
_CLOCK_TOKEN = re.compile(r"^(\d{1,2})(?::(\d{2}))?(am|pm|h|hrs)?$")
_DAY_MONTH = re.compile(r"^(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?$")
_HOUR_WORDS = {k: v for k, v in NUMBER_WORDS.items() if k != "uno"}


@dataclass(frozen=True)
class When:
    """What a patient asked for, in the clinic's local dates and wall-clock times.

    `date_from`/`date_to` are inclusive local dates, `time_from`/`time_to` a window of the
    slot's start (`time_to` exclusive), `weekdays` the allowed days (0 = Monday), `at` one exact
    time ("a las 3pm"). `earliest`: "lo más pronto posible"; `not_that_day`: "no puedo ese día"
    (the day after the one shown, decided by the caller).
    """

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    time_from: dt.time | None = None
    time_to: dt.time | None = None
    weekdays: frozenset[int] | None = None
    part_of_day: PartOfDay | None = None
    at: TimeRequest | None = None
    earliest: bool = False
    not_that_day: bool = False

    @property
    def empty(self) -> bool:
        return self == When()


def _hour_24(hour: int, afternoon: bool | None) -> int:
    """Clinics open by day: "las 3" is 15:00, "las 9" 9:00, "las 12" noon."""
    if afternoon is True:
        return hour + 12 if hour < 12 else hour
    if afternoon is False:
        return 0 if hour == 12 else hour
    return hour + 12 if 1 <= hour <= 6 else hour


def _clock_at(tokens: list[str], i: int) -> tuple[TimeRequest, int] | None:
    """A time starting at tokens[i] ("3", "3:30", "3pm", "tres"), and the index after it."""
    token = tokens[i]
    minute: int | None = None
    afternoon: bool | None = None
    if m := _CLOCK_TOKEN.match(token):
        hour = int(m.group(1))
        minute = int(m.group(2)) if m.group(2) else None
        if m.group(3) in ("am", "pm"):
            afternoon = m.group(3) == "pm"
    elif token in _HOUR_WORDS:
        hour = _HOUR_WORDS[token]
    else:
        return None
    j = i + 1
    rest = tokens[j : j + 3]
    if rest[:1] in (["am"], ["pm"]):
        afternoon, j = rest[0] == "pm", j + 1
    elif rest[:2] in (["a", "m"], ["p", "m"]):
        afternoon, j = rest[0] == "p", j + 2
    elif rest[:2] == ["y", "media"]:
        minute, j = 30, j + 2
    elif rest[:2] == ["y", "cuarto"]:
        minute, j = 15, j + 2
    rest = tokens[j : j + 3]
    if rest[:2] == ["de", "la"] and len(rest) == 3 and rest[2] in _PART_WORDS:
        afternoon, j = _PART_WORDS[rest[2]] != PartOfDay.MORNING, j + 3
    if hour > 23 or (minute is not None and minute > 59) or (afternoon is not None and hour > 12):
        return None
    return TimeRequest(hour, minute, afternoon), j


def _cue_before(tokens: list[str], i: int, cues: tuple[tuple[str, ...], ...]) -> bool:
    return any(tuple(tokens[max(0, i - len(c)) : i]) == c for c in cues)


def _next_weekday(today: dt.date, weekday: int) -> dt.date:
    return today + dt.timedelta(days=(weekday - today.weekday()) % 7)


def _date_with_day(
    today: dt.date, day: int, month: int | None, weekday: int | None
) -> dt.date | None:
    """The next date (from today) with that day of the month; a named weekday breaks ties."""
    candidates = []
    year, mon = today.year, today.month
    for _ in range(13):
        if month is None or mon == month:
            with contextlib.suppress(ValueError):
                candidate = dt.date(year, mon, day)
                if candidate >= today:
                    candidates.append(candidate)
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    if weekday is not None:
        for candidate in candidates:
            if candidate.weekday() == weekday:
                return candidate
    return candidates[0] if candidates else None


def _month_range(year: int, month: int) -> tuple[dt.date, dt.date]:
    first = dt.date(year, month, 1)
    following = dt.date(year + (month == 12), month % 12 + 1, 1)
    return first, following - dt.timedelta(days=1)


_PLURAL_WEEKDAYS = {"sabados", "domingos"}
_SPELLINGS = {
    "mañana": "manana",
    "mañanas": "mananas",
    "mañanita": "mananita",
    "mediodía": "mediodia",
}
_PAST_CUES = {"desde", "hace", "pasado", "anterior"}


def _after_clock(tokens: list[str], i: int) -> bool:
    """ "3 de la tarde": "tarde" says a.m./p.m. of that time, not a part of the day."""
    if i < 3 or tokens[i - 2 : i] != ["de", "la"]:
        return False
    before = tokens[i - 3]
    return (
        bool(_CLOCK_TOKEN.match(before)) or before in _HOUR_WORDS or before in ("media", "cuarto")
    )


def parse_when(text: str, today: dt.date) -> When:
    """The day/time request in `text`, relative to the clinic's local `today`; When() if none.

    Reads "mañana", "pasado mañana", "hoy", "el viernes", "el martes 8", "el 15 de diciembre",
    "15/12", "la próxima semana", "el fin de semana", "en la tarde", "después de las 5",
    "antes de las 10", "entre las 2 y las 4", "a las 3pm", "lo más pronto posible",
    "no puedo ese día", "los martes". A bare number is never a date or a time ("8" is a row).
    """
    clock = " ".join(_CLOCK_CHARS.sub(" ", strip_accents(text[:MAX_WHEN_CHARS].casefold())).split())
    tokens = [_SPELLINGS.get(token, token) for token in clock.split()]
    norm = " ".join(tokens)
    if not tokens:
        return When()
    found: dict = {}
    if _has_phrase(norm, _EARLIEST_PHRASES):
        found["earliest"] = True
    if _has_phrase(norm, _NOT_THAT_DAY_PHRASES):
        found["not_that_day"] = True
    day: dt.date | None = None
    weekdays: set[int] = set()
    recurring = False
    for i, token in enumerate(tokens):
        previous = tokens[i - 1] if i else ""
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "hoy":
            day = today
        elif token == "manana" and previous == "pasado":
            day = today + dt.timedelta(days=2)
        elif token in _PART_WORDS:
            if token == "manana" and previous not in _PART_CUES:
                day = today + dt.timedelta(days=1)  # "mañana" on its own is tomorrow
            elif previous in _PART_CUES and not _after_clock(tokens, i):
                found["part_of_day"] = _PART_WORDS[token]
        elif (token in ("temprano", "temprana") and previous != "mas") or (
            token == "hora" and previous == "primera"
        ):
            found["part_of_day"] = PartOfDay.MORNING  # "temprano", "a primera hora"
        elif token == "almuerzo" and previous in ("del", "de"):
            found["part_of_day"] = PartOfDay.AFTERNOON  # "después del almuerzo"
        elif (
            token in ("dias", "días")
            and previous.isdigit()
            and tokens[i - 2 : i - 1]
            in (
                ["en"],
                ["de"],
            )
        ):
            day = today + dt.timedelta(days=int(previous))  # "en 3 días", "dentro de 3 días"
        elif token in ("mediodia",) or (token == "dia" and previous == "medio"):
            found["part_of_day"] = PartOfDay.MIDDAY
        elif token in WEEKDAYS and (previous in _PAST_CUES or tokens[i - 2 : i - 1] == ["desde"]):
            continue  # "tengo fiebre desde el lunes": when it started, not when to come
        elif token in WEEKDAYS:
            weekdays.add(WEEKDAYS[token])
            recurring = recurring or previous == "los" or token in _PLURAL_WEEKDAYS
            if following.isdigit() and tokens[i + 2 : i + 3] != ["de"]:
                # "el martes 8": the 8th, which should be a Tuesday
                day = _date_with_day(today, int(following), None, WEEKDAYS[token]) or day
        elif token in MONTHS and (len(token) >= 5 or previous == "de"):
            month = MONTHS[token]
            number = None
            if previous == "de" and tokens[i - 2 : i - 1] and tokens[i - 2].isdigit():
                number = int(tokens[i - 2])  # "15 de diciembre"
            elif previous.isdigit():
                number = int(previous)  # "15 diciembre"
            elif following.isdigit():
                number = int(following)  # "diciembre 15"
            if number is not None:
                day = _date_with_day(today, number, month, None) or day
            elif previous in ("en", "de", "para"):
                first, last = _month_range(today.year + (month < today.month), month)
                found["date_from"], found["date_to"] = max(first, today), last
        elif token == "dia" and following.isdigit():
            day = _date_with_day(today, int(following), None, None) or day
        elif m := _DAY_MONTH.match(token):
            day = _date_with_day(today, int(m.group(1)), int(m.group(2)), None) or day
    if day is not None:
        found["date_from"] = found["date_to"] = day
    elif weekdays and not recurring and len(weekdays) == 1:
        day = _next_weekday(today, next(iter(weekdays)))
        found["date_from"] = found["date_to"] = day
    elif weekdays:
        found["weekdays"] = frozenset(weekdays)
    if "date_from" not in found:
        if _has_phrase(norm, _NEXT_WEEK_PHRASES):
            monday = today + dt.timedelta(days=7 - today.weekday())
            found["date_from"], found["date_to"] = monday, monday + dt.timedelta(days=6)
        elif _has_phrase(norm, _WEEKEND_PHRASES):
            saturday = _next_weekday(today, 5)
            found["date_from"], found["date_to"] = saturday, saturday + dt.timedelta(days=1)
        elif _has_phrase(norm, _THIS_WEEK_PHRASES):
            found["date_from"] = today
            found["date_to"] = today + dt.timedelta(days=6 - today.weekday())
        elif _has_phrase(norm, _NEXT_MONTH_PHRASES):
            first = dt.date(today.year + (today.month == 12), today.month % 12 + 1, 1)
            found["date_from"] = first
            found["date_to"] = dt.date(
                first.year + (first.month == 12), first.month % 12 + 1, 1
            ) - dt.timedelta(days=1)
    part = found.get("part_of_day")
    if part is not None:
        found["time_from"], found["time_to"] = PART_OF_DAY_HOURS[part]
    afternoon_hint = None if part is None else part != PartOfDay.MORNING
    i = 0
    between = False
    while i < len(tokens):
        token = tokens[i]
        # "las 3", "la una"; a bare "la 3" is the third row of a list, never a time.
        cue_las = i + 1 < len(tokens) and (
            token == "las" or (token == "la" and tokens[i + 1] == "una")
        )
        bare_pm = _CLOCK_TOKEN.match(token) and (
            token.endswith(("am", "pm")) or tokens[i + 1 : i + 2] in (["am"], ["pm"], ["p"], ["a"])
        )
        if not cue_las and not bare_pm:
            between = between or token == "entre"
            i += 1
            continue
        start = i + 1 if cue_las else i
        parsed = _clock_at(tokens, start)
        if parsed is None:
            i += 1
            continue
        request, after = parsed
        if request.afternoon is None and afternoon_hint is not None and request.hour < 12:
            request = TimeRequest(request.hour, request.minute, afternoon_hint)
        hour = _hour_24(request.hour, request.afternoon)
        at = dt.time(hour, request.minute or 0)
        if _cue_before(tokens, i, _AFTER_CUES) or (between and "time_from" not in found):
            found["time_from"] = at
            if part is not None:
                found["time_to"] = PART_OF_DAY_HOURS[part][1]
        elif _cue_before(tokens, i, _BEFORE_CUES) or (between and tokens[i - 1 : i] == ["y"]):
            found["time_to"] = at
            if part is not None and "time_from" not in found:
                found["time_from"] = PART_OF_DAY_HOURS[part][0]
        else:
            found["at"] = TimeRequest(request.hour, request.minute, hour >= 12)
        i = after
    if found.get("time_from") and found.get("time_to") and found["time_from"] >= found["time_to"]:
        found.pop("time_to")
    return When(**found)


# ---------------------------------------------------------------------------------------------
# Doctors: "con la dra Rojas", "con el doctor de la otra vez"

_TITLES = {"dr", "dra", "doctor", "doctora", "doc", "medico", "medica", "el", "la", "con"}
_DOCTOR_CUES = {"dr", "dra", "doctor", "doctora", "doc", "medico", "medica"}
_PREVIOUS_DOCTOR_PHRASES = (
    "de la otra vez",
    "de la vez pasada",
    "de la ultima vez",
    "de la ultima cita",
    "mismo doctor",
    "misma doctora",
    "mismo medico",
    "misma medica",
    "el mismo de",
    "la misma de",
    "que me atendio",
    "que me vio",
    "de siempre",
)
# Words after "con" that are never a doctor's name ("con fiebre", "con mi hijo").
_NOT_NAMES = {
    "mi",
    "mis",
    "el",
    "la",
    "los",
    "las",
    "un",
    "una",
    "fiebre",
    "dolor",
    "tos",
    "gripa",
    "alguien",
    "persona",
    "asesor",
    "urgencia",
    "sangre",
}


@dataclass(frozen=True)
class DoctorRequest:
    """Which doctor the patient named: one id, several that fit (ask), or "the previous one"."""

    doctor_id: int | None = None
    candidates: tuple[int, ...] = ()
    previous: bool = False
    said: str = ""  # the words taken as the name, for "no encontré a la Dra. …"
    titled: bool = False  # a title was written ("dra", "doctor"): a doctor was surely meant


def _name_words(name: str) -> list[str]:
    return [w for w in normalize(name).split() if w not in _TITLES and len(w) >= 3]


def match_doctor(text: str, doctors: dict[int, str]) -> DoctorRequest:
    """The doctor named in `text` among `doctors` ({id: full name}), accent-, case- and
    title-insensitive, forgiving a typo in longer names.

    Only words after a cue count ("con …", "dr", "dra", "doctora …"), so a symptom that happens
    to be a surname is not a doctor. "con el doctor de la otra vez" → `previous`.
    """
    norm = normalize(text[:MAX_WHEN_CHARS])
    words = norm.split()
    if not words:
        return DoctorRequest()
    cued = any(w in _DOCTOR_CUES for w in words)
    if cued and _has_phrase(norm, _PREVIOUS_DOCTOR_PHRASES):
        return DoctorRequest(previous=True)
    if _has_phrase(norm, ("con el de la otra vez", "con la de la otra vez", "con el mismo")):
        return DoctorRequest(previous=True)
    # The words right after each cue, up to three, are the name being said.
    said: list[str] = []
    title = ""
    for i, word in enumerate(words):
        if word in _DOCTOR_CUES:
            title = title or word
        if word not in _DOCTOR_CUES and word != "con":
            continue
        for follower in words[i + 1 : i + 5]:
            if follower in _TITLES:
                continue
            if follower in _NOT_NAMES or not follower.isalpha() or len(follower) < 3:
                break
            if follower not in said:
                said.append(follower)
    said = said[:3]
    if not said:
        return DoctorRequest()
    scores: dict[int, int] = {}
    for doctor_id, name in doctors.items():
        names = _name_words(name)
        # An exact word counts twice a typo: "luis" is Luis before it is Luisa.
        score = sum(
            2 if w in names else 1 if any(_similar(w, n) for n in names) else 0 for w in said
        )
        if score:
            scores[doctor_id] = score
    if not scores:
        return DoctorRequest(said=" ".join(said), titled=bool(title))
    best = max(scores.values())
    top = tuple(sorted(d for d, score in scores.items() if score == best))
    if len(top) > 1 and title:
        # "la dra Rojas" when there are a Dra. and a Dr. Rojas: the title tells them apart.
        female = title in ("dra", "doctora", "medica")
        fitting = tuple(d for d in top if _is_female_title(doctors[d]) is female)
        top = fitting or top
    if len(top) == 1:
        return DoctorRequest(doctor_id=top[0], said=" ".join(said), titled=bool(title))
    return DoctorRequest(candidates=top, said=" ".join(said), titled=bool(title))


def _is_female_title(full_name: str) -> bool | None:
    first = normalize(full_name).split()[:1]
    if first in (["dra"], ["doctora"]):
        return True
    if first in (["dr"], ["doctor"]):
        return False
    return None


# ---------------------------------------------------------------------------------------------
# Symptoms written where a name was asked ("me duele el oído y me zumba")

_SYMPTOM_WORDS = {
    "duele",
    "duelen",
    "dolor",
    "dolores",
    "fiebre",
    "tos",
    "gripa",
    "gripe",
    "zumba",
    "zumban",
    "arde",
    "pica",
    "picazon",
    "mareo",
    "mareos",
    "vomito",
    "vomitos",
    "diarrea",
    "nauseas",
    "sangra",
    "hinchado",
    "hinchada",
    "inflamado",
    "inflamada",
    "molestia",
    "malestar",
    "siento",
    "tengo",
    "sintomas",
    "alergia",
    "infeccion",
    "cita",
    "quiero",
    "necesito",
}
_FUNCTION_WORDS = {"me", "se", "le", "el", "los", "mi", "mis", "que", "y", "con", "un", "una", "no"}


def looks_like_symptoms(text: str) -> bool:
    """A sentence about health or a request, not a person's name."""
    words = normalize(text[:MAX_WHEN_CHARS]).split()
    if any(w in _SYMPTOM_WORDS for w in words):
        return True
    # "me zumba el oído": names never carry these little words.
    return sum(1 for w in words if w in _FUNCTION_WORDS) >= 2


# ---------------------------------------------------------------------------------------------
# Questions about the clinic, answered from its FAQ entries

_QUESTION_STARTS = {
    "que",
    "cual",
    "cuales",
    "cuanto",
    "cuanta",
    "cuantos",
    "cuantas",
    "donde",
    "como",
    "cuando",
    "aceptan",
    "reciben",
    "tienen",
    "hay",
    "puedo",
    "atienden",
    "manejan",
    "trabajan",
    "venden",
    "hacen",
    "dan",
    "sirve",
}
# Words every question has: they say nothing about which one it is.
_FAQ_STOPWORDS = {
    "que",
    "cual",
    "cuanto",
    "como",
    "donde",
    "tienen",
    "hay",
    "para",
    "por",
    "la",
    "el",
    "los",
    "las",
    "de",
    "del",
    "una",
    "un",
    "cita",
    "consulta",
    "clinica",
    "ustedes",
}


@dataclass(frozen=True)
class FaqCandidate:
    entry_id: int
    question: str
    keywords: tuple[str, ...]


def is_question(text: str) -> bool:
    """ "¿tienen parqueadero?", "cuánto vale la consulta": asking something, not telling."""
    words = normalize(text).split()
    return "?" in text[:MAX_TEXT] or bool(words and words[0] in _QUESTION_STARTS)


def match_faq(text: str, entries: list[FaqCandidate]) -> int | None:
    """The id of the FAQ entry the patient is asking about, or None when none fits.

    Keyword phrases found whole in the text count by their length in words ("dónde dejo el
    carro" beats "carro"); a long keyword may carry one typo; the entry's own question words
    count a little. Ties go to the entry listed first.
    """
    norm = normalize(text)
    words = norm.split()
    if not words or len(words) > 40:
        return None
    padded = f" {norm} "
    best_id, best = None, 0.0
    for entry in entries:
        score = 0.0
        for keyword in entry.keywords:
            phrase = normalize(keyword)
            if not phrase:
                continue
            if f" {phrase} " in padded:
                score += len(phrase.split())
            elif " " not in phrase and len(phrase) >= 5 and _has_word(words, (phrase,)):
                score += 0.8
        question_words = {
            w for w in normalize(entry.question).split() if w not in _FAQ_STOPWORDS and len(w) > 3
        }
        score += 0.5 * sum(1 for w in question_words if w in words)
        if score > best:
            best_id, best = entry.entry_id, score
    return best_id if best >= 0.8 else None


def mentions_doctor(text: str) -> bool:
    """Cheap test before looking doctors up: "con …" or a title ("dra", "doctor") is written."""
    words = normalize(text[:MAX_WHEN_CHARS]).split()
    return any(w in _DOCTOR_CUES or w == "con" for w in words)


_DOCUMENT_WORDS = re.compile(r"\b(?:mi )?(?:c[eé]dula|documento)(?: es)?\b", re.IGNORECASE)


def without_document(text: str) -> str:
    """What else a message says besides the document ("1020304050 me duele una muela")."""

    def drop_document(match: re.Match) -> str:
        digits = sum(c.isdigit() for c in match.group())
        return " " if 8 <= digits <= 15 else match.group()

    rest = _DIGIT_GROUPS.sub(drop_document, _DOC_PREFIX.sub(" ", text[:MAX_TEXT]))
    rest = _DOCUMENT_WORDS.sub(" ", rest)
    return " ".join(rest.replace(",", " , ").split()).strip(" ,.")
