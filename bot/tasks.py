"""Background tasks on Django's tasks API (django-tasks-db backend, `manage.py run_worker`)."""

from django.tasks import task

from bot import processing


@task(queue_name="turns")
def run_turns(conversation_id: int, attempt: int = 0) -> int:
    """Process every pending inbound message of one conversation, in order."""
    return processing.process_conversation(conversation_id, attempt=attempt)
