"""Redis-held state that may be lost (DESIGN §6). Placeholder until the bot issue lands."""


def ping() -> dict:
    return {"status": "not configured"}
