"""``manage.py demo_credentials``: print the demo's admin login and API key again (``make run``
prints them once, and the workers' logs scroll them away)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.core.demo import DemoNotSeeded, demo_credentials_read


class Command(BaseCommand):
    help = "Print the demo admin login and the demo tenant's API key (a fresh key if the saved one no longer works)."

    def handle(self, *args, **options) -> None:
        try:
            credentials = demo_credentials_read()
        except DemoNotSeeded as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"admin user:     {credentials.admin_username}")
        self.stdout.write(f"admin password: {credentials.admin_password}")
        self.stdout.write(f"demo API key:   {credentials.api_key}")
        if credentials.key_minted:
            self.stdout.write("note:           a new demo key, made just now: the saved one no longer authenticates "
                              "(only a key's hash is stored, so an old key cannot be shown again)")
