"""Identity numbers: their one format and how they appear where they must not be read whole.

Plain Python (no Django) so bot.nlu and bot.engine can use it. A document is 8 to 15 digits; a
WhatsApp id 6 to 20. Logs, the audit trail and the admin show only the last digits (`mask`).
"""

from __future__ import annotations

import re

DOCUMENT_PATTERN = r"^\d{8,15}$"
DOCUMENT_RE = re.compile(DOCUMENT_PATTERN)
WHATSAPP_ID_RE = re.compile(r"^\d{6,20}$")


def is_document(value: str) -> bool:
    """Is `value` (digits only, already cleaned) a document number?"""
    return bool(DOCUMENT_RE.fullmatch(value))


def mask(value: str, keep: int = 4) -> str:
    """ "…4567": enough to tell numbers apart, not enough to use one."""
    return f"…{value[-keep:]}" if value else ""
