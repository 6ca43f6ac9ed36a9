"""Message catalogues without GNU gettext: extract msgids and compile .po → .mo with Babel.

python scripts/i18n.py extract   # write locale/django.pot from the code and templates
python scripts/i18n.py compile   # compile every locale/*/LC_MESSAGES/django.po
"""

import sys
from pathlib import Path

from babel.messages.frontend import CommandLineInterface

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "locale"


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "compile"
    cli = CommandLineInterface()
    if command == "extract":
        cli.run(
            [
                "pybabel",
                "-q",
                "extract",
                "-F",
                str(ROOT / "scripts" / "babel.cfg"),
                "-k",
                "_",
                "-k",
                "gettext_lazy",
                "-k",
                "ngettext:1,2",
                "-k",
                "pgettext:1c,2",
                "--no-location",
                "-o",
                str(LOCALE / "django.pot"),
                "clinics",
                "bot",
                "sophia_web",
                "outreach",
            ]
        )
        return 0
    if command == "compile":
        for po in sorted(LOCALE.glob("*/LC_MESSAGES/django.po")):
            cli.run(["pybabel", "-q", "compile", "-i", str(po), "-o", str(po.with_suffix(".mo"))])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
