"""``manage.py create_api_key --tenant SLUG [--name NAME]``: print a new key, alone, on stdout."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.tenants.models import Tenant
from apps.tenants.services import key_create


class Command(BaseCommand):
    help = "Create an API key for a tenant and print its secret (shown only this once) on standard output."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--name", default="default", help="A label for the key.")

    def handle(self, *args, tenant: str, name: str, **options) -> None:
        try:
            owner = Tenant.objects.get(slug=tenant)
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"no tenant with slug {tenant!r}") from exc
        created = key_create(tenant=owner, name=name)
        self.stdout.write(created.secret)
