"""A provider's Batch API switch: off by default, and only for providers that serve OpenAI's."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from apps.catalog.models import Provider


@pytest.mark.django_db
def test_it_keeps_the_batch_api_off_unless_the_operator_turns_it_on():
    provider = Provider.objects.create(name="openai", kind=Provider.Kind.OPENAI, base_url="https://api.openai.com/v1")
    assert provider.batch_api is False


@pytest.mark.parametrize("kind", [Provider.Kind.OPENAI, Provider.Kind.SIMULATED])
def test_it_takes_the_batch_api_on_providers_that_serve_openai_s(kind):
    Provider(name="p", kind=kind, base_url="https://example.test/v1", batch_api=True).clean()


@pytest.mark.parametrize("kind", [Provider.Kind.ANTHROPIC, Provider.Kind.AZURE, Provider.Kind.GEMINI])
def test_it_refuses_the_batch_api_on_other_kinds(kind):
    with pytest.raises(ValidationError) as error:
        Provider(name="p", kind=kind, base_url="https://example.test", batch_api=True).clean()
    assert "batch_api" in error.value.message_dict
