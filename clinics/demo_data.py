"""The demo clinics' specialties and doctors (seed_demo). Keywords are editable per clinic later.

SPECIALTIES maps slug → (name, triage keywords). The keywords are general medical vocabulary plus
the everyday Colombian words patients use for it (gripa, muela, barros, perrilla, paño, agrieras…);
bot.triage matches them accent- and case-insensitively, by word stem, tolerating small typos, and
weighs multiword phrases above single words and words that only one specialty uses above shared
ones. Clinics edit them in the admin.
"""

# fmt: off
SPECIALTIES: dict[str, tuple[str, list[str]]] = {
    "medicina-general": (
        "Medicina General",
        [
            "fiebre", "calentura", "gripa", "gripe", "resfriado", "resfriada", "tos", "flema",
            "malestar", "malestar general", "dolor de cabeza", "cefalea", "migraña", "jaqueca",
            "dolor de cuerpo", "escalofríos", "virus", "infección", "diarrea", "vómito",
            "náuseas", "ganas de vomitar", "dolor de estómago", "dolor de barriga",
            "dolor abdominal", "estómago", "barriga", "gastritis", "agrieras", "acidez",
            "reflujo", "indigestión", "estreñimiento", "colitis", "gases", "parásitos",
            "lombrices", "infección urinaria", "ardor al orinar", "orina", "orinar", "riñones",
            "mareo", "cansancio", "fatiga", "debilidad", "decaimiento", "anemia", "diabetes",
            "azúcar alta", "glucosa", "tiroides", "sobrepeso", "obesidad", "bajar de peso",
            "chequeo", "chequeo general", "control", "examen médico", "exámenes de sangre",
            "laboratorios", "resultados", "certificado médico", "incapacidad", "fórmula médica",
            "renovar fórmula", "medicamentos", "consulta general", "médico general",
            "medicina general", "hemorroides", "dolor al orinar", "ganglios", "hinchazón",
            "débil", "somnolencia", "azúcar", "mocos", "barriga inflamada",
            "dolor de garganta con tos",
        ],
    ),
    "pediatria": (
        "Pediatría",
        [
            "pediatra", "pediatría", "bebé", "recién nacido", "lactante", "lactancia", "vacunas",
            "vacunación", "esquema de vacunación", "crecimiento y desarrollo",
            "control de crecimiento", "niño sano", "control del niño", "talla y peso",
            "pañalitis", "cólicos del bebé", "leche de fórmula", "tetero", "dentición",
            "varicela", "sarampión", "paperas", "bronquiolitis", "no quiere comer", "no come",
            "infantil", "niños", "niñas",
        ],
    ),
    "ginecologia": (
        "Ginecología",
        [
            "ginecólogo", "ginecóloga", "ginecología", "regla", "menstruación", "período",
            "periodo", "cólicos menstruales", "retraso menstrual", "atraso", "citología",
            "flujo", "flujo vaginal", "vagina", "vaginal", "útero", "matriz", "ovarios",
            "quiste en el ovario", "ovario poliquístico", "miomas", "endometriosis", "embarazo",
            "embarazada", "prueba de embarazo", "control prenatal", "planificar",
            "planificación familiar", "anticonceptivos", "pastillas anticonceptivas",
            "inyección de planificar", "implante subdérmico", "dispositivo", "diu", "t de cobre",
            "menopausia", "calores", "sofocos", "seno", "senos", "mamografía",
            "bulto en el seno", "pezón", "picazón vaginal", "infección vaginal", "candidiasis",
            "papiloma", "vph", "ecografía transvaginal", "infertilidad", "quedar embarazada",
            "relaciones sexuales", "sangrado vaginal", "mareo en el embarazo", "relaciones",
            "sangrado después de relaciones",
        ],
    ),
    "odontologia": (
        "Odontología",
        [
            "odontólogo", "odontóloga", "odontología", "dentista", "muela", "muelas",
            "dolor de muela", "diente", "dientes", "encías", "caries", "calza", "resina",
            "endodoncia", "tratamiento de conducto", "nervio del diente", "limpieza dental",
            "profilaxis", "ortodoncia", "brackets", "frenillos", "retenedor", "placa dental",
            "prótesis dental", "dentadura", "caja de dientes", "cordal", "cordales",
            "muela del juicio", "sensibilidad dental", "mal aliento", "halitosis", "flemón",
            "absceso", "blanqueamiento", "sacar una muela", "extracción", "bruxismo",
            "rechinar los dientes", "mandíbula", "sangrado de encías", "boca", "colmillo",
            "implante dental", "se me partió un diente", "corona",
        ],
    ),
    "dermatologia": (
        "Dermatología",
        [
            "dermatólogo", "dermatóloga", "dermatología", "piel", "granos", "barros", "acné",
            "espinillas", "puntos negros", "mancha", "manchas en la piel", "lunar", "lunares",
            "verruga", "verrugas", "picazón", "comezón", "rasquiña", "ronchas", "urticaria",
            "alergia en la piel", "sarpullido", "brote", "eccema", "dermatitis", "psoriasis",
            "hongos", "hongos en las uñas", "uñas", "uña encarnada", "caspa", "caída del pelo",
            "caída del cabello", "se me cae el pelo", "calvicie", "alopecia", "cabello",
            "cuero cabelludo", "piel seca", "resequedad", "quemadura de sol", "cicatriz",
            "rosácea", "pecas", "paño", "melasma", "vitíligo", "herpes", "culebrilla",
            "sudoración excesiva", "cara", "rostro", "peladura", "piel irritada", "callos",
            "pelo", "me pica la piel", "picazón en el cuerpo", "quemadura", "grasa en la cara",
        ],
    ),
    "oftalmologia": (
        "Oftalmología",
        [
            "oftalmólogo", "oftalmóloga", "oftalmología", "optómetra", "optometría", "ojo",
            "ojos", "vista", "visión", "borroso", "veo borroso", "no veo bien", "veo doble",
            "lentes", "gafas", "anteojos", "fórmula de gafas", "miopía", "astigmatismo",
            "presbicia", "catarata", "cataratas", "glaucoma", "conjuntivitis", "ojo rojo",
            "lagaña", "orzuelo", "perrilla", "párpado", "lagrimeo", "ardor en los ojos",
            "ojo seco", "visión doble", "moscas volantes", "destellos", "carnosidad", "pterigio",
            "lentes de contacto", "retina", "ceguera", "leer de cerca", "no veo", "ver bien",
            "ver de lejos", "ver de noche",
        ],
    ),
    "cardiologia": (
        "Cardiología",
        [
            "cardiólogo", "cardióloga", "cardiología", "corazón", "palpitaciones", "taquicardia",
            "arritmia", "corazón acelerado", "latidos", "pulso", "presión alta", "hipertensión",
            "hipertenso", "tensión alta", "presión arterial", "tensión", "presión", "soplo",
            "colesterol", "triglicéridos", "electrocardiograma", "ecocardiograma", "holter",
            "marcapasos", "infarto", "angina de pecho", "se me acelera el corazón",
            "falta de aire al caminar", "me canso al caminar", "ahogo al subir escaleras",
            "subir escaleras", "piernas hinchadas", "tobillos hinchados", "mareo al pararme",
            "insuficiencia cardiaca", "cardiaco",
        ],
    ),
    "psicologia": (
        "Psicología",
        [
            "psicólogo", "psicóloga", "psicología", "terapia", "ansiedad", "ansioso", "ansiosa",
            "estrés", "estresado", "estresada", "depresión", "deprimido", "deprimida",
            "tristeza", "triste", "ganas de llorar", "angustia", "angustiado", "nervios",
            "nervioso", "nerviosa", "pánico", "ataques de pánico", "insomnio", "no duermo",
            "no puedo dormir", "pesadillas", "duelo", "autoestima", "problemas de pareja",
            "terapia de pareja", "separación", "divorcio", "miedo", "fobia", "obsesiones",
            "déficit de atención", "hiperactividad", "conducta", "comportamiento", "rabia",
            "ira", "irritable", "mal genio", "matoneo", "bullying", "adicción", "alcohol",
            "drogas", "soledad", "desmotivado", "sin ganas de nada", "salud mental", "emociones",
            "emocional", "preocupación", "me siento mal emocionalmente", "concentración",
            "concentrarme", "adicto", "rebelde", "rebeldía",
        ],
    ),
    "ortopedia": (
        "Ortopedia",
        [
            "ortopedista", "ortopedia", "traumatólogo", "hueso", "huesos", "articulación",
            "articulaciones", "rodilla", "tobillo", "hombro", "codo", "muñeca", "cadera",
            "columna", "espalda", "dolor de espalda", "lumbago", "ciática", "fractura",
            "esguince", "torcedura", "torcí", "me torcí", "luxación", "dislocado", "tendón",
            "tendinitis", "menisco", "ligamento", "yeso", "juanete", "pie plano", "artritis",
            "artrosis", "osteoporosis", "túnel carpiano", "cojear", "cojera", "golpe", "caída",
            "me caí", "talón", "fisioterapia", "escoliosis", "hernia discal", "dolor de pierna",
            "dolor de brazo", "dolor de pie", "dolor de mano", "dolor de cuello",
            "dolor de dedo",
        ],
    ),
    "otorrinolaringologia": (
        "Otorrinolaringología",
        [
            "otorrino", "otorrinolaringólogo", "otorrinolaringología", "oído", "oídos", "oreja",
            "dolor de oído", "oído tapado", "sordera", "no oigo", "no escucho bien",
            "escucho mal", "pitido", "zumbido", "tinnitus", "cera", "tapón de cera", "otitis",
            "garganta", "dolor de garganta", "amígdalas", "amigdalitis", "anginas", "faringitis",
            "ronquera", "afonía", "ronco", "voz", "nariz", "nariz tapada", "congestión nasal",
            "sinusitis", "rinitis", "tabique", "tabique desviado", "sangrado nasal", "pólipos",
            "ronquidos", "roncar", "apnea del sueño", "vértigo", "olfato", "carraspera",
            "me sangra la nariz", "audición", "audiometría", "estornudos", "pus en el oído",
        ],
    ),
}
# fmt: on
