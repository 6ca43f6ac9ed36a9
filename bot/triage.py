"""Symptoms → one of the clinic's specialties, and red flags that must go to an emergency line.

Rules first, always: each Specialty's editable keywords are matched against the patient's words
after the same folding on both sides — accents and case away (`bot.text.normalize`), the usual
Spanish spelling slips folded (z/s, c/s, v/b, silent h, ll/y), a light stem (plurals, diminutives,
participles: "muelas"/"muela", "granitos"/"grano", "torcido"/"torcí") and, for longer words, one
typo of slack. Multiword keywords weigh more than single words, and words only one specialty uses
more than words several share ("glaucoma" over "control"). A child ("mi hijo", "niña de 3 años")
moves general-medicine evidence to paediatrics when the clinic has it. When the rules are unsure
and an LLM helper is configured, it may pick among the clinic's own specialties; red flags are
never left to it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, Protocol

from bot.text import MAX_TEXT, normalize

if TYPE_CHECKING:
    from clinics.models import Specialty

logger = logging.getLogger(__name__)

# Below this the bot asks the patient to choose a specialty instead of guessing.
CONFIDENT_AT = 0.62
PEDIATRICS = "pediatria"
GENERAL = "medicina-general"


@dataclass(frozen=True)
class TriageResult:
    specialty: str | None  # slug of the clinic's specialty, None when nothing matched
    confidence: float  # 0..1
    red_flag: str | None  # a code such as "chest_pain"; decided by rules only
    source: Literal["rules", "llm"]
    alternatives: tuple[str, ...] = ()  # other candidate slugs, best first
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def confident(self) -> bool:
        return self.specialty is not None and self.confidence >= CONFIDENT_AT

    def as_json(self) -> dict:
        return {
            "specialty": self.specialty,
            "confidence": round(self.confidence, 2),
            "red_flag": self.red_flag is not None,
            "source": self.source,
        }


class TriageLLM(Protocol):
    """What classify() needs from bot.llm.LLMHelper (None on any failure)."""

    def classify(
        self, text: str, specialties: Sequence[Specialty]
    ) -> tuple[str | None, float, tuple[int, int]] | None: ...


# --- word folding -------------------------------------------------------------------------------

_STOPWORD_TEXT = """
    a al algo algun alguna ante como con cual cuando de del desde donde el ella ellos en entre
    es esa ese eso esta estan estas este esto estoy fue ha hace hacen han hay he la las le les
    lo los mas me mi mis muy mucho mucha muchos muchas nos o para pero poco por porque que
    quiero se si sin sobre su sus tambien te tengo tiene tienen ti tu tus un una uno unos unas
    usted ya y yo estado estaba siento sientes siente ayer hoy dias semana semanas meses ahora
    todo toda todos todas bastante demasiado super re cita citas favor necesito quisiera gracias
    hola buenas buenos tardes noches pues bueno ok tarde noche manana hasta otra otro vez veces
    rato
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

# Forms of "doler" all mean the same thing to triage: "me duele la muela" ≈ "dolor de muela".
_PAIN_WORDS = "duele duelen dolia dolian dolio doliendo dolores adolorido adolorida doler"
_CANONICAL = dict.fromkeys(_PAIN_WORDS.split(), "dolor")

_DOUBLE = re.compile(r"([a-z])\1+")


def fold(word: str) -> str:
    """Spelling-insensitive form of a normalised word: cabeza/cabesa, vista/bista, oido/hoido."""
    w = word.replace("x", "ch").replace("ch", "\0").replace("h", "").replace("ll", "y")
    w = w.replace("v", "b").replace("nb", "mb").replace("z", "s").replace("ce", "se")
    w = w.replace("ci", "si").replace("qu", "k").replace("c", "k").replace("\0", "ch")
    w = w.replace("ge", "je").replace("gi", "ji")  # ginecólogo / jinecologo
    if w.startswith("ps"):  # psicólogo / sicologo
        w = w[1:]
    return _DOUBLE.sub(r"\1", w)


_SUFFIXES = ("asiones", "isiones", "asion", "ision")


def stem(word: str) -> str:
    """A light Spanish stem of a folded word; the same on keywords and on the patient's text."""
    w = word
    if len(w) <= 3:
        return w
    for suffix in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            return w[: -len(suffix)]
    if w.endswith("es") and len(w) >= 5 and w[-3] not in "aeiou":
        w = w[:-2]
    elif w.endswith("s") and len(w) >= 4:
        w = w[:-1]
    for suffix in ("sito", "sita", "ito", "ita"):  # diminutives: granito → gran(o)
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    for suffix in ("ado", "ada", "ido", "ida"):  # participles: torcido → torc(í)
        if w.endswith(suffix) and len(w) - 3 >= 4:
            w = w[:-3]
            break
    else:
        # Adjectives, verbs and infinitives: vaginal → vagin(a), hinchan → hinch(ados),
        # planificar → planific(ación), vomitar → vomit(o).
        for suffix in ("al", "an", "en", "ar", "er", "ir"):
            if w.endswith(suffix) and len(w) - 2 >= 4:
                w = w[:-2]
                break
    if len(w) >= 4 and w[-1] in "aeio":
        w = w[:-1]
    return w


Token = tuple[str, str]  # (stem, folded word): stems match exactly, folded words with a typo


def _tokens(text: str) -> list[Token]:
    folded = [fold(_CANONICAL.get(w, w)) for w in normalize(text).split() if w not in _STOPWORDS]
    return [(stem(w), w) for w in folded]


def tokens(text: str) -> list[str]:
    """The patient's (or a keyword's) content words as comparable stems."""
    return [stem_ for stem_, _ in _tokens(text)]


def _within_one_edit(a: str, b: str) -> bool:
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la > lb:
        a, b, la, lb = b, a, lb, la
    i = 0
    while i < la and a[i] == b[i]:
        i += 1
    if la == lb:  # one substitution, or two neighbours swapped
        return a[i + 1 :] == b[i + 1 :] or (
            i + 1 < la and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
        )
    return a[i:] == b[i + 1 :]  # one insertion


_FUZZY_MIN = 6  # shorter stems must match exactly: "ojo" is not "oro"


def _token_match(keyword_token: Token, text_token: Token) -> float:
    """1.0 same stem, 0.8 one typo away (longer words only, as written or stemmed), else 0."""
    if keyword_token[0] == text_token[0]:
        return 1.0
    # Stems first, then the whole folded words: "palpitacioes" is one letter from the word.
    for index in (0, 1):
        a, b = keyword_token[index], text_token[index]
        if min(len(a), len(b)) >= _FUZZY_MIN and a[0] == b[0] and _within_one_edit(a, b):
            return 0.8
    return 0.0


# --- keyword scoring ----------------------------------------------------------------------------


Phrases = tuple[tuple[tuple[Token, ...], float], ...]  # (phrase tokens, weight)


@dataclass(frozen=True)
class _Keywords:
    by_specialty: tuple[tuple[str, Phrases], ...]
    known_stems: frozenset[str]  # every stem in any keyword: such a word is no typo


@lru_cache(maxsize=64)
def _compile_keywords(keywords: tuple[tuple[str, tuple[str, ...]], ...]) -> _Keywords:
    """Phrase tokens and weights per specialty. A word shared by several specialties' keywords
    ("control", "dolor") says less than one only this specialty uses ("glaucoma")."""
    phrases = {slug: {tuple(_tokens(k)) for k in raw} - {()} for slug, raw in keywords}
    owners: dict[str, set[str]] = {}
    for slug, slug_phrases in phrases.items():
        for phrase in slug_phrases:
            for stem_, _ in phrase:
                owners.setdefault(stem_, set()).add(slug)

    def weight(phrase: tuple[Token, ...]) -> float:
        specificity = max(1 / len(owners[stem_]) for stem_, _ in phrase)
        return specificity * (1 + 0.75 * (len(phrase) - 1))

    return _Keywords(
        by_specialty=tuple(
            (slug, tuple((phrase, weight(phrase)) for phrase in sorted(slug_phrases)))
            for slug, slug_phrases in phrases.items()
        ),
        known_stems=frozenset(owners),
    )


class _Text:
    """The patient's tokens, with each keyword token's match per position computed once."""

    def __init__(self, words: list[Token], known_stems: frozenset[str]) -> None:
        self.words = words
        # "citología" is a keyword of its own, not a typo of "psicología".
        self.exact_only = [stem_ in known_stems for stem_, _ in words]
        self._matches: dict[Token, list[float]] = {}

    def matches(self, keyword_token: Token) -> list[float]:
        found = self._matches.get(keyword_token)
        if found is None:
            if len(keyword_token[1]) < _FUZZY_MIN:  # the common case, kept cheap
                found = [1.0 if t[0] == keyword_token[0] else 0.0 for t in self.words]
            else:
                found = [
                    float(t[0] == keyword_token[0]) if exact else _token_match(keyword_token, t)
                    for t, exact in zip(self.words, self.exact_only, strict=True)
                ]
            self._matches[keyword_token] = found
        return found


def _phrase_score(phrase: tuple[Token, ...], text: _Text) -> float:
    """How well a keyword phrase occurs in the text (0..1): all its words, close, in any order."""
    per_word = [text.matches(word) for word in phrase]
    if not all(any(m) for m in per_word):
        return 0.0
    if len(per_word) == 1:
        return max(per_word[0])
    window = len(phrase) + 1
    best = 0.0
    for start in range(len(text.words)):
        quality = 1.0
        for matches in per_word:
            found = max(matches[start : start + window])
            if not found:
                break
            quality = min(quality, found)
        else:
            best = max(best, quality)
    return best


_CHILD = re.compile(
    r"\b(?:mi|mis|el|la|los|las|nuestro|nuestra|su|un|una)\s+"
    r"(?:hij[oa]s?|hijit[oa]s?|bebes?|bb|bebit[oa]s?|bebecit[oa]s?|ni[nñ][oa]s?|ni[nñ]it[oa]s?|nene|nena|"
    r"chiquit[oa]s?|pelad[oa]s?|peladit[oa]s?|sobrin[oa]s?|niet[oa]s?|muchachit[oa]s?)\b"
    r"|\brecien nacid[oa]\b|\blactante\b|\bbebes?\b|\b\d{1,2} (?:meses|semanas|dias) de nacid"
    r"|\b(?:ni[nñ][oa]|nene|nena)\b"
)
# An age, not a duration: "niña de 3 años", "tiene 8 meses" — but not "hace 2 semanas".
_AGE = re.compile(r"(?:\b(\w+) )?(?:como )?(\d{1,3}) (a[nñ]os?|mes(?:es)?|semanas?|dias?)\b")
_DURATION_WORDS = frozenset(
    ["hace", "desde", "durante", "por", "llevo", "lleva", "llevamos", "tras", "cada", "en"]
)


def _ages_in_years(norm: str) -> list[float]:
    ages = []
    for before, number, unit in _AGE.findall(norm):
        if before in _DURATION_WORDS:
            continue
        ages.append(int(number) / {"a": 1, "m": 12, "s": 52, "d": 365}[unit[0]])
    return ages


def mentions_child(text: str) -> bool:
    """ "mi hijo", "mi bebé", "niña de 3 años", "tiene 8 meses": the patient is a child."""
    norm = normalize(text)
    ages = _ages_in_years(norm)
    if ages and min(ages) >= 18:
        return False
    if _CHILD.search(norm):
        return True
    # Months and weeks alone are ambiguous ("tos de 2 semanas"); years say more.
    return any(a <= 14 for a in ages if a >= 1) or bool(re.search(r"\bde nacid", norm))


# Symptoms fit in a few dozen words; a 4,000-character message should not cost a turn's budget.
MAX_WORDS = 60


def _scores(text: str, specialties: Sequence[Specialty]) -> dict[str, float]:
    compiled = _compile_keywords(tuple((s.slug, tuple(s.keyword_list())) for s in specialties))
    words = _Text(_tokens(text)[:MAX_WORDS], compiled.known_stems)
    scores: dict[str, float] = {}
    for slug, phrases in compiled.by_specialty:
        # A phrase is stronger evidence than its words: "dolor de oído" beats "dolor".
        total = sum(weight * _phrase_score(phrase, words) for phrase, weight in phrases)
        if total:
            scores[slug] = total
    slugs = {s.slug for s in specialties}
    if PEDIATRICS in slugs and mentions_child(text):
        # A child's fever or cough belongs to the paediatrician, but a child's cavity still goes to
        # the dentist: general-medicine evidence moves over, specialists keep theirs.
        scores[PEDIATRICS] = scores.get(PEDIATRICS, 0.0) + 0.9 + scores.pop(GENERAL, 0.0)
    return scores


def _confidence(best: float, second: float) -> float:
    # How much evidence (saturating) and how far ahead of the runner-up.
    strength = 1.0 - math.exp(-best)
    margin = best / (best + second)
    return round(0.4 * strength + 0.6 * margin, 3)


def classify_rules(text: str, specialties: Sequence[Specialty]) -> TriageResult:
    red_flag = detect_red_flag(text)
    ranked = sorted(_scores(text, specialties).items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked:
        return TriageResult(None, 0.0, red_flag, "rules")
    best_slug, best = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    return TriageResult(
        specialty=best_slug,
        confidence=_confidence(best, second),
        red_flag=red_flag,
        source="rules",
        alternatives=tuple(slug for slug, _ in ranked[1:4]),
    )


def classify(
    text: str, specialties: Sequence[Specialty], *, llm: TriageLLM | None = None
) -> TriageResult:
    """Rules first; the LLM only when the rules are unsure, and only among these specialties."""
    rules = classify_rules(text, specialties)
    if rules.red_flag or rules.confident or llm is None or not specialties:
        return rules
    try:
        answer = llm.classify(text, specialties)
    except Exception:  # the helper should not raise, but triage must answer whatever happens
        logger.exception("triage: LLM helper raised; using the rules result")
        return rules
    if answer is None:
        return rules
    slug, confidence, (prompt_tokens, completion_tokens) = answer
    slugs = [s.slug for s in specialties]
    if slug not in slugs:
        logger.info("triage: LLM gave no usable specialty; using the rules result")
        return TriageResult(
            rules.specialty,
            rules.confidence,
            None,
            "rules",
            rules.alternatives,
            prompt_tokens,
            completion_tokens,
        )
    ranked = [rules.specialty, *rules.alternatives]
    return TriageResult(
        specialty=slug,
        confidence=max(0.0, min(1.0, confidence)),
        red_flag=None,
        source="llm",
        alternatives=tuple(s for s in ranked if s and s != slug)[:3],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


# --- red flags ----------------------------------------------------------------------------------
# Patterns run on the normalised, folded text (no accents, z→s, v→b, c→k/s, no h, ll→y), and are
# written in plain Spanish then folded the same way, so "convulsiones" also catches "combulsiones".
# Recall beats precision: a false alarm costs a receptionist a look, a miss can cost a life.

_RAW_RED_FLAGS: dict[str, list[str]] = {
    "chest_pain": [
        r"dolor\w* (?:muy )?(?:fuerte |intenso |horrible )?(?:en|de|del) (?:el |mi )?pecho",
        r"dolor\w* (?:en el |del )?pecho",
        r"(?:mal|raro|feo) del pecho",
        r"due(?:le|len|lio) (?:mucho |muy fuerte |duro )?(?:el |en el |mi )?pecho",
        r"(?:aprieta|apreta|oprime|presiona|quema|arde|pesa|punza|punzada en) (?:el |mi )?pecho",
        r"(?:presion|opresion|peso|apreton|punzada|puntada|ardor) (?:fuerte )?(?:en|sobre) "
        r"(?:el |mi )?pecho",
        r"pecho (?:apretado|oprimido)",
        r"infarto",
        r"ataque (?:al|del) corazon",
        r"ataque cardiac",
        r"dolor (?:que )?(?:se )?(?:me )?(?:baja|corre|va|pasa|irradia)\w* (?:hacia |al |por el )?"
        r"(?:el )?brazo izquierdo",
        r"brazo izquierdo (?:dormido|adormecido|entumido)",
        r"(?:duerme|durmio|adormece|adormecio|entume|entumio|hormiguea) (?:el )?brazo izquierdo",
    ],
    "breathing": [
        r"no (?:puedo|puede|podia|pude|logro|logra) respirar",
        r"(?:me|se|le) (?:estoy |esta |estaba )?ahog\w*",
        r"\bahogando",
        r"atragant",
        r"se (?:atoro|atasco) con",
        r"(?:cuesta|costando|cuesta mucho|dificil|duro) respirar",
        r"no (?:me|le) entra (?:el )?aire",
        r"(?:dificultad|problema)s? (?:grave |fuerte )?(?:para|al) respirar",
        r"(?:me|le|se) (?:falta|faltaba) (?:mucho )?(?:el )?aire (?:y|de repente|mucho)",
        r"(?:labios|boca|cara|dedos) (?:morad|azul)",
        r"(?:se (?:esta )?(?:puso|pone|poniendo)|esta) morad",
        r"no respira",
        r"respira (?:muy )?(?:raro|mal|feo|rapidisimo|con (?:mucha )?dificultad)",
        r"silbido (?:en el pecho )?(?:y|que) no (?:puede|puedo)",
    ],
    "seizure": [
        r"convuls",
        r"ataque (?:de )?epilep",
        r"crisis (?:epilep|convuls)",
        r"espuma (?:por|en) la boca",
        r"(?:se puso|quedo) (?:todo |toda )?rigid[oa] y (?:temblando|sacudiendo|moviendo)",
    ],
    "stroke": [
        r"(?:medio|la mitad del) cuerpo",
        r"(?:la )?mitad de la cara",
        r"no se le entiende (?:lo que|nada|cuando) (?:habla|dice)",
        r"(?:perdio|perdi|sin) (?:la )?fuerza (?:en|del|de la|de un) (?:brazo|pierna|lado|mano)",
        r"(?:boca|cara) (?:torcida|chueca|caida|ladeada|desviada)",
        r"(?:torcio|torcia|cayo|desvio|ladeo) (?:la )?(?:boca|cara)",
        r"no (?:puede|podia|pudo) hablar",
        r"no (?:puedo|podia|pude) hablar",
        r"(?:habla|hablando|arrastra las palabras|lengua) (?:enredad|trabad|raro|extrano)",
        r"no (?:puedo|puede|podia) mover (?:el|la|un|una) (?:brazo|pierna|lado|mano|mitad|cara)",
        r"no (?:siento|siente) (?:el|la|un|una) (?:lado|brazo|pierna)",
        r"derrame cerebral",
        r"accidente cerebro",
        r"(?:trombosis|isquemia) cerebral",
        r"se (?:me|le) (?:durmio|adormecio|paralizo) (?:el|la|todo el|toda la) "
        r"(?:lado|cara|mitad)",
        r"parálisis facial|paralisis facial",
    ],
    "suicide": [
        r"(?:me )?(?:quiero|quiere|queria|quisiera) morir",
        r"quiero morirme",
        r"(?:ganas|deseos) de morir",
        r"quitarme la vida",
        r"quitar(?:se|me) la vida",
        r"suicid",
        r"no (?:quiero|quiere) (?:seguir )?vivir",
        r"(?:matarme|me voy a matar|me quiero matar)",
        r"acabar con (?:mi|su) vida",
        r"(?:hacerme|me hago|me estoy haciendo|hacerse) (?:un )?da[nñ]o",
        r"(?:cortarme|cortarse|me corto|se corto|me estoy cortando|se esta cortando) (?:las )?"
        r"(?:venas|brazos|mu[nñ]ecas)",
        r"acabar con todo",
        r"no aguanto (?:mas )?(?:la|esta|mi) vida",
        r"(?:dejar de existir|desaparecer para siempre)",
        r"(?:tirarme|me voy a tirar|me quiero tirar) (?:de|del|por|a) ",
        r"tomarme (?:todas|un frasco|una caja|muchas|un monton)",
        r"(?:quisiera|quiero|prefiero|preferiria) estar muert",
        r"no (?:le )?(?:encuentro|veo|tiene) sentido (?:a )?(?:la|mi|seguir)",
        r"no (?:vale|tiene) (?:la pena|sentido) (?:seguir )?vivir",
        r"mejor (?:estaria|estarian) (?:muerto|muerta|sin mi)",
        # Said sideways, as people do: "no quiero despertar", "estarían mejor sin mí".
        r"(?:no|nunca mas) (?:quiero|quisiera|volver a) despertar",
        r"dormir(?:me)? (?:y no (?:despertar|volver)|para siempre)",
        r"(?:ya )?no (?:quiero|quiere) (?:estar aqui|seguir aqui|seguir mas|existir)",
        r"(?:irme|me quiero ir|me voy a ir) de este mundo",
        r"(?:estarian|estarán|estaran|vivirian) mejor sin mi",
        r"(?:soy|seria) una carga para (?:todos|mi familia|ellos)",
        r"(?:es|esta es) mi despedida",
        r"(?:despedirme|me despido) de (?:todos|ustedes|mi familia) (?:para siempre|por ultima)",
        r"ya no (?:le )?(?:veo|encuentro) (?:ningun )?sentido",
        r"no aguanto (?:mas )?vivir",
        r"(?:quiero|quisiera) (?:desaparecer|no existir|dejar de vivir)",
        r"(?:me corte|me hice cortes|me estoy lastimando|me lastime) (?:a proposito|adrede|"
        r"las venas|los brazos|otra vez)",
        r"(?:pense|pienso|estoy pensando) en (?:matarme|quitarme|hacerme da|acabar con)",
        r"(?:tengo|compre|guarde) (?:las |unas |muchas )?pastillas para (?:acabar|no despertar|"
        r"dormir para siempre|matarme)",
        r"para no (?:volver a )?despertar",
    ],
    "heavy_bleeding": [
        r"(?:sangrado|sangre|sangra|sangro|sangrando) (?:muy )?(?:abundante|muchisim|much|bastante|"
        r"a chorros|sin parar|demasiad)",
        r"mucha sangre",
        r"hemorragia",
        r"no (?:para|deja|paro|dejaba|ha parado|ha dejado) de sangrar",
        r"(?:vomit\w*|tos\w*|escup\w*) (?:con )?sangre",
        r"(?:vomit\w*|tos\w*) con sangre",
        r"(?:charco|chorro) de sangre",
        r"se (?:esta )?desangr",
    ],
    "unconscious": [
        r"desmay",
        r"inconsciente",
        r"no (?:responde|reacciona|despierta|se despierta|abre los ojos)"
        r"(?! (?:mis|los|el|la|a mis|a los) (?:mensajes|llamadas|telefono|celular|correo))",
        r"perdi\w* (?:el )?(?:conocimiento|la conciencia|el sentido)",
        r"(?:se|me) (?:privo|privé|prive|desvanecio)",
        r"\bse (?:cayo|desplomo) (?:al piso )?y no",
        r"desplom",
        r"no (?:lo|la|le) (?:puedo|podemos|pudimos) despertar",
    ],
    "poisoning": [
        r"se (?:tomo|trago|comio|bebio) (?:unas|todas (?:las|sus)|muchas|un monton de|varias|"
        r"un frasco de|una caja de|las) (?:pastillas|pepas|pildoras|medicinas|tabletas)",
        r"(?:me|se) (?:tome|tomo|trague|trago) (?:todas (?:las|mis)|un frasco|una caja|"
        r"muchas|un monton)",
        r"veneno",
        r"envenen",
        r"intoxic",
        r"sobredosis",
        r"(?:se )?(?:tomo|bebio|trago) (?:el |un |una |del )?(?:limpido|cloro|varsol|raticida|"
        r"gasolina|acido|soda caustica|insecticida|matarratas|creolina)",
        r"(?:mordio|pico|mordida de) (?:una |un )?(?:culebra|serpiente|vibora|alacran|escorpion)",
        # An intentional overdose in everyday words: "me tomé todo el frasco", "me tomé 20 pepas".
        r"(?:me|se|le) (?:tome|tomo|trague|trago|di|dio) (?:todo|toda) (?:el|la|mi|su) "
        r"(?:frasco|caja|tarro|blister|tableta|medicina|remedio)",
        r"(?:me|se) (?:tome|tomo|trague|trago|meti|metio) (?:como )?(?:\d{2,3}|diez|quince|veinte|"
        r"treinta|cuarenta|cincuenta) (?:pastillas|pepas|pildoras|tabletas|capsulas)",
        r"(?:me|se) (?:tome|tomo|trague|trago) (?:las|mis|sus) (?:pastillas|pepas|pildoras|"
        r"tabletas|medicinas|medicamentos)(?: \w+){0,4} "
        r"(?:todas|de una|de golpe|juntas|de un solo)",
        r"(?:pastillas|pepas|pildoras|tabletas|medicamentos|remedios) (?:todas |todos )?"
        r"(?:de una|de golpe|juntas|juntos|de un solo trago)",
        r"(?:me|se) (?:pase|paso|excedi|excedio) (?:de|con) (?:las |mis |sus )?(?:pastillas|pepas|"
        r"pildoras|dosis|medicamentos|medicinas)",
        r"(?:tome|tomo|trague|trago) (?:pastillas|pepas|medicamentos|medicinas) de mas",
        r"(?:me|le) (?:tome|tomo|bebi|bebio|trague|trago) (?:el |un |una |del |un poco de )?"
        r"(?:limpido|cloro|varsol|raticida|gasolina|acido|soda caustica|insecticida|matarratas|"
        r"creolina|veneno|thinner|tiner|formol)",
        r"(?:se|me) (?:tomo|tome|trago|trague|comio|bebio|bebi) (?:algo|un liquido|unas pastillas)"
        r" (?:de|del) (?:la |el )?(?:bano|cocina|limpieza|mi mama|la abuela|mi papa)",
    ],
    "anaphylaxis": [
        r"(?:se me|se le) (?:cierra|esta cerrando|cerro|hincho|inflamo|esta hinchando) "
        r"(?:la )?(?:garganta|lengua|cara|labios|boca|ojos)",
        r"(?:garganta|lengua|labios) (?:muy )?(?:hinchad|inflamad|cerrad)",
        r"(?:cara|ojos) (?:muy )?(?:hinchad|inflamad)\w* (?:y|no|de repente)",
        r"reaccion alergica (?:fuerte|grave|severa|muy fuerte|seria)",
        r"anafila",
        r"shock alergico",
        r"(?:alergia|alergico|alergica) (?:y|,)? ?no (?:puedo|puede) respirar",
    ],
    "trauma": [
        r"\baccidente\b",
        r"(?:choque|chocamos|choco|me choco|nos chocaron|lo chocaron|la chocaron)\b",
        r"atropell",
        r"(?:golpe|golpazo|totazo|trancazo) (?:muy )?(?:fuerte )?(?:en|de) la cabeza",
        r"(?:se|me) (?:golpeo|pego|golpee|pegue) (?:muy )?(?:duro |fuerte )?(?:en )?la cabeza",
        r"(?:herida|cortada|corte) (?:muy )?(?:profunda|grande|de (?:bala|cuchillo|arma|machete|"
        r"navaja|puñal))",
        r"(?:apunal|acuchill|macheta|baleado|balea|dispar|le pegaron un tiro)",
        r"fractura expuesta",
        r"(?:rompio|rompi|rajo|raje|abrio|partio) la cabeza",
        r"(?:hueso|huesos) (?:expuesto|afuera|por fuera|salido)",
        r"se (?:le|me) (?:ve|salio) el hueso",
        r"(?:quemadura|quemado|quemada) (?:grave|grande|muy grande|en todo|en toda|de tercer)",
        r"se (?:quemo|me quemo) con (?:agua hirviendo|aceite|gasolina|polvora)",
        r"(?:aceite|agua|leche) (?:hirviendo|caliente) (?:encima|en|por)",
        r"con (?:aceite|agua) hirviendo",
        r"(?:cayo|cai|caimos|tumbo|tumbaron|volco) de (?:la|una|el) "
        r"(?:moto|bicicleta|cicla|caballo)",
        r"(?:se cayo|cayo|me cai) (?:de|desde) (?:un|una|el|la) (?:segundo piso|tercer piso|techo|"
        r"terraza|balcon|altura|andamio|arbol)",
        r"electrocut",
        r"(?:casi se ahoga|se ahogo) en",
    ],
    "pregnancy": [
        r"(?:embarazada|embarazo|gestacion|gestando)\b(?: \w+){0,30} "
        r"(?:sangr|hemorrag|manch\w* de sangre)",
        r"(?:sangr|hemorrag)\w*\b(?: \w+){0,30} (?:embarazada|embarazo|gestacion)\b",
        r"(?:rompi|rompio|se me rompio|se le rompio|rompi la) (?:la )?(?:fuente|bolsa)",
        r"(?:el|mi) bebe no se (?:mueve|ha movido|siente)",
        r"no (?:siento|se siente) (?:al|a mi|el|mi) bebe",
        r"dejo de (?:moverse|sentir al bebe)",
        r"(?:embarazada|embarazo)\b(?: \w+){0,30} "
        r"(?:convuls|dolor de cabeza muy fuerte|veo lucecitas|"
        r"hinchad[ao] toda)",
        r"(?:contracciones|dolores de parto|trabajo de parto|voy a dar a luz)",
    ],
    "infant_danger": [
        r"(?:recien nacid|bebe de \d+ (?:dias|semanas)|de \d+ (?:dias|semanas) de nacid|"
        r"bebe de (?:1|2|un|dos) mes)\w*\b(?: \w+){0,30} (?:fiebre|calentura)",
        r"(?:fiebre|calentura)\b(?: \w+){0,30} (?:recien nacid|bebe de \d+ (?:dias|semanas)|"
        r"de \d+ (?:dias|semanas) de nacid)",
        r"(?:bebe|nino|nina|hijo|hija)\b(?: \w+){0,30} "
        r"(?:fiebre|calentura) (?:muy )?(?:alta|de 39|de 40|"
        r"de 41|que no (?:baja|le baja|cede))",
        r"(?:fiebre|calentura) (?:muy )?(?:alta|de 40|de 41|que no (?:baja|le baja|cede))"
        r"\b(?: \w+){0,30} "
        r"(?:bebe|nino|nina|hijo|hija)",
        r"(?:bebe|recien nacido)\b(?: \w+){0,30} (?:no (?:quiere )?(?:respira|despierta|reacciona)|"
        r"esta morad|se puso morad|no para de llorar y esta)",
        r"fontanela (?:hundida|abombada)",
        r"(?:bebe|nino|nina|hijo|hija)\b(?: \w+){0,30} "
        r"(?:39|40|41) (?:de|grados de) (?:fiebre|temperatura)",
        r"(?:fiebre|calentura)\b(?: \w+){0,30} "
        r"(?:rigidez|rigido|tieso|manchas moradas|puntos morados)",
        r"(?:rigidez|rigido|tieso|manchas moradas|puntos morados)\b(?: \w+){0,30} "
        r"(?:fiebre|calentura)",
    ],
    "severe_pain": [
        r"(?:el )?peor dolor de (?:cabeza|mi vida)",
        r"dolor de cabeza (?:muy )?(?:subito|repentino|explosivo)",
        r"dolor (?:muy )?(?:fuerte|horrible|insoportable) (?:en|de) (?:la )?(?:barriga|estomago) "
        r"(?:y|con) (?:vomit|fiebre|la barriga dura)",
    ],
}


_CLAUSE_END = re.compile(r"[,;.:!?¡¿\n]+")
# No Spanish word is longer; a capped word keeps every `\w*` in the patterns below from
# scanning a 900,000-letter "word" once per starting point (quadratic time).
MAX_WORD = 40


def _fold_words(text: str) -> tuple[list[str], list[int]]:
    """Folded words, and for each the number of the clause it is in ("No, me duele…": 0, 1, 1)."""
    words: list[str] = []
    clauses: list[int] = []
    for number, clause in enumerate(_CLAUSE_END.split(text[:MAX_TEXT])):
        for word in normalize(clause).split():
            words.append(fold(word[:MAX_WORD]))
            clauses.append(number)
    return words, clauses


def _fold_pattern(pattern: str) -> str:
    """Fold a pattern's literal words like the text, leaving the regex syntax alone."""

    def fold_literal(match: re.Match) -> str:
        return fold(match.group(0))

    # Only runs of letters that are not a regex escape (\w, \b, \d, \s) are folded.
    return re.sub(r"(?<!\\)[a-zñ]+", fold_literal, pattern)


_RED_FLAGS: tuple[tuple[str, re.Pattern], ...] = tuple(
    (code, re.compile(_fold_pattern(p))) for code, pats in _RAW_RED_FLAGS.items() for p in pats
)

# "no tengo dolor en el pecho", "sin dolor de pecho", "nunca me he desmayado": the flag is denied.
_NEGATED_BEFORE = re.compile(
    _fold_pattern(
        r"(?:^| )(?:no|sin|ni|nunca|tampoco|jamas)"
        r"(?: (?:tengo|tiene|siento|siente|hay|he tenido|ha tenido|presento|me|le|he|ha|se))*"
        r"(?: (?:un|una|el|la|ningun|ninguna|ningún|mucho|nada de))?\s*$"
    )
)
# Some patterns include their own "no" ("no puedo respirar"): those are never negations.
_SELF_NEGATING = re.compile(r"^no\b")


def detect_red_flag(text: str) -> str | None:
    """A code for the first emergency sign in the text ("chest_pain", "suicide"…), else None.

    Linear in the length of the text: the text is folded into capped words once, every pattern
    spans a bounded number of words (no `.*`, no nested repeats: tests/bot/test_triage.py
    checks), and a denial is looked up from the match's word index, never by rescanning.
    """
    words, clauses = _fold_words(text)
    folded = " ".join(words)
    starts = list(itertools.accumulate((len(w) + 1 for w in words[:-1]), initial=0))
    for code, pattern in _RED_FLAGS:
        for match in pattern.finditer(folded):
            if not _SELF_NEGATING.match(match.group(0)) and _denied(words, clauses, starts, match):
                continue
            return code
    return _combined_red_flag(words, clauses)


def _denied(words: list[str], clauses: list[int], starts: list[int], match: re.Match) -> bool:
    """A negation right before the match, in the same clause: "no, me duele el pecho" is not."""
    at = bisect.bisect_right(starts, match.start()) - 1
    if at < 0 or at >= len(words):
        return False
    before = []
    for index in range(at - 1, max(-1, at - 7), -1):
        if clauses[index] != clauses[at]:
            break
        before.append(words[index])
    return bool(_NEGATED_BEFORE.search(" ".join(reversed(before)) + " "))


def _fold_phrase(phrase: str) -> str:
    return " ".join(fold(word) for word in normalize(phrase).split())


# Signs that are an emergency together though not each alone, also when a patient writes them
# in separate messages ("me duele el pecho" … "y se me duerme el brazo izquierdo").
_RAW_COMBINED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chest_pain": (
        ("pecho", "torax", "corazon"),
        (
            "brazo izquierdo",
            "mandibula",
            "quijada",
            "sudor frio",
            "sudando frio",
            "sudoracion fria",
            "me falta el aire",
            "falta de aire",
            "me ahogo",
            "me voy a desmayar",
            "espalda",
        ),
    ),
    "stroke": (
        ("cara", "boca", "labio"),
        ("brazo", "pierna", "no puedo hablar", "hablo raro", "hablo enredado", "se me traba"),
    ),
    "meningitis": (
        ("fiebre", "calentura"),
        (
            "cuello rigido",
            "cuello tieso",
            "nuca rigida",
            "no puede doblar el cuello",
            "no puedo doblar el cuello",
            "manchas moradas",
            "puntos morados",
        ),
    ),
}
_NUMB = (
    "duerme",
    "durmi",
    "dormido",
    "dormida",
    "adormec",
    "entume",
    "entumi",
    "hormigue",
    "debil",
    "no lo siento",
    "no la siento",
)
_NUMB_FOLDED = tuple(_fold_phrase(n) for n in (*_NUMB, "torcida", "caida", "chueca"))


def _combined_red_flag(words: list[str], clauses: list[int]) -> str | None:
    folded = f" {' '.join(words)} "
    for code, (first, second) in _COMBINED:
        if not any(f" {term}" in folded for term in first):
            continue
        if any(f" {term}" in folded for term in second):
            if code == "stroke" and not any(f" {n}" in folded for n in _NUMB_FOLDED):
                continue  # "la cara y el brazo" need numbness or a droop to mean a stroke
            return code
    return None


_COMBINED = tuple(
    (code, (tuple(map(_fold_phrase, first)), tuple(map(_fold_phrase, second))))
    for code, (first, second) in _RAW_COMBINED.items()
)


# How far back a patient's messages are read together for red flags.
RECENT_MESSAGES = 4


def detect_red_flag_in_messages(messages: Sequence[str]) -> str | None:
    """Red flags judged over a patient's recent messages together, newest last.

    The newest alone first (its own code wins), then the last few read as one text, so signs
    split across messages add up; an older message that was already an emergency on its own
    does not raise the alarm again for an unrelated new one.
    """
    recent = [m[:MAX_TEXT] for m in messages[-RECENT_MESSAGES:] if m and m[:MAX_TEXT].strip()]
    if not recent:
        return None
    if code := detect_red_flag(recent[-1]):
        return code
    if len(recent) == 1:
        return None
    # Each message its own clause, so a denial in one never reaches into the next.
    words, clauses = _fold_words(". ".join(recent))
    return _combined_red_flag(words, clauses)
