"""`manage.py api_keys create|list|revoke <clinic-slug> …`: API keys from the command line."""

from __future__ import annotations

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from clinics.models import Clinic
from integrations.keys import ApiKeyError, api_key_create, api_key_revoke
from integrations.models import ApiKey


class Command(BaseCommand):
    help = "Create, list or revoke a clinic's API keys (the full key is shown once, at creation)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("clinic")
        create.add_argument("--name", required=True)
        create.add_argument("--scope", choices=ApiKey.Scope.values, default=ApiKey.Scope.READ)
        listing = sub.add_parser("list")
        listing.add_argument("clinic")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("clinic")
        revoke.add_argument("prefix")

    def handle(self, *, action: str, clinic: str, **options) -> None:
        try:
            target = Clinic.objects.get(slug=clinic)
        except Clinic.DoesNotExist as exc:
            raise CommandError(f"no clinic with slug {clinic!r}") from exc
        if action == "create":
            try:
                key, raw = api_key_create(
                    clinic=target, name=options["name"], scope=options["scope"]
                )
            except ApiKeyError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"Key {key.name!r} ({key.scope}) for {target.slug}:\n{raw}\n")
            self.stdout.write("Store it now: it is not shown again.\n")
        elif action == "list":
            for key in ApiKey.objects.filter(clinic=target):
                state = "revoked" if key.revoked_at else "active"
                used = key.last_used_at.isoformat() if key.last_used_at else "never"
                self.stdout.write(f"{key.prefix}  {key.scope:5}  {state:7}  {used}  {key.name}\n")
        else:
            key = ApiKey.objects.filter(clinic=target, prefix=options["prefix"]).first()
            if key is None:
                raise CommandError("no such key for this clinic")
            api_key_revoke(clinic=target, key_id=key.pk)
            self.stdout.write(f"Revoked {key.prefix}.\n")
