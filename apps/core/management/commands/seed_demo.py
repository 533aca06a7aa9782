"""``manage.py seed_demo``: create the demo platform (idempotent) and print its credentials.

An existing demo provider keeps its base URL (the one the running platform uses) unless
``--upstream-url`` asks for another.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from apps.core.demo import demo_seed


class Command(BaseCommand):
    help = "Create the demo superuser, tenant, key, simulated provider, models and routing rules."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--upstream-url", default=None,
            help="Base URL of the simulated upstream (…/v1). Given, it also moves an existing demo provider there; "
                 "without it an existing provider keeps its URL.")

    def handle(self, *args, upstream_url: str | None, **options) -> None:
        credentials = demo_seed(upstream_url=upstream_url, repoint=upstream_url is not None)
        self.stdout.write(f"admin user:     {credentials.admin_username}")
        self.stdout.write(f"admin password: {credentials.admin_password}")
        self.stdout.write(f"demo API key:   {credentials.api_key}")
        self.stdout.write(f"demo upstream:  {credentials.upstream_url}")
