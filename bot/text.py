"""Text normalisation shared by triage and the engine's understanding of replies.

People write "Sí", "si", "SII", "sí 👍", "mañana", "manana": compare them after `normalize`.
"""

import re
import unicodedata

# WhatsApp's own limit on a text message: no genuine message is longer, and understanding reads
# no more than this of any text (a longer one is stored whole by the webhook, never parsed whole).
MAX_TEXT = 4096

_NON_WORD = re.compile(r"[^a-z0-9ñ\s]")
_SPACES = re.compile(r"\s+")


def strip_accents(text: str) -> str:
    """Remove diacritics but keep ñ, which changes meaning in Spanish (año / ano)."""
    text = text.replace("ñ", "\0").replace("Ñ", "\1")
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.replace("\0", "ñ").replace("\1", "Ñ")


def normalize(text: str) -> str:
    """Lower case, no accents, no emoji or punctuation, single spaces; at most MAX_TEXT read."""
    text = strip_accents(text[:MAX_TEXT].casefold())
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def words(text: str) -> list[str]:
    return normalize(text).split()
