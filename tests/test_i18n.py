"""Everything a patient or receptionist reads is in Spanish: every msgid has a translation."""

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from django.utils import translation
from django.utils.translation import gettext

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {
    "_": None,
    "gettext": None,
    "gettext_lazy": None,
    "ngettext": (1, 2),
    "pgettext": ((1, "c"), 2),
}


def _catalogue():
    with open(ROOT / "locale" / "es" / "LC_MESSAGES" / "django.po", "rb") as po:
        return read_po(po)


def _msgids_in_code() -> set[str]:
    found = set()
    for package in ("clinics", "bot", "sophia_web", "outreach", "integrations"):
        for _file, _line, message, _comments, _context in extract_from_dir(
            ROOT / package, method_map=[("**.py", "python")], keywords=KEYWORDS
        ):
            found.add(message[0] if isinstance(message, tuple) else message)
    return found


def test_it_translates_every_message_the_code_uses():
    """Ours or Django's own catalogue (weekday names, for instance) must give Spanish."""
    ours = {m.id if isinstance(m.id, str) else m.id[0] for m in _catalogue() if m.string}
    with translation.override("es"):
        missing = sorted(m for m in _msgids_in_code() - ours if gettext(m) == m)
    assert not missing, f"untranslated msgids: {missing[:20]}"


def test_it_keeps_each_msgid_once_in_the_catalogue():
    text = (ROOT / "locale" / "es" / "LC_MESSAGES" / "django.po").read_text()
    ids = [line for line in text.splitlines() if line.startswith("msgid ") and line != 'msgid ""']
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates


def test_it_speaks_spanish_from_the_compiled_catalogue():
    with translation.override("es"):
        assert gettext(
            "The document number must have 8 to 15 digits, with no other characters."
        ).startswith("El número de documento")
