"""The demo clinics' specialties and doctors (seed_demo). Keywords are editable per clinic later.

SPECIALTIES: slug → (name, triage keywords). The triage helper owns the keywords.
"""

SPECIALTIES: dict[str, tuple[str, list[str]]] = {
    "medicina-general": ("Medicina General", []),
    "pediatria": ("Pediatría", []),
    "ginecologia": ("Ginecología", []),
    "odontologia": ("Odontología", []),
    "dermatologia": ("Dermatología", []),
    "oftalmologia": ("Oftalmología", []),
    "cardiologia": ("Cardiología", []),
    "psicologia": ("Psicología", []),
    "ortopedia": ("Ortopedia", []),
    "otorrinolaringologia": ("Otorrinolaringología", []),
}
