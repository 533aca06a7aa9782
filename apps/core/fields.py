"""Model fields shared by several apps."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import models


@lru_cache(maxsize=4)
def _fernet(key: str, secret_key: str) -> Fernet:
    if key:
        return Fernet(key.encode())
    # Development only (production settings refuse to start without a key): a stable key
    # derived from SECRET_KEY so the demo works with no configuration.
    derived = hashlib.sha256(b"switchyard-credentials:" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def fernet() -> Fernet:
    """The Fernet instance for the configured encryption key."""
    return _fernet(settings.ENCRYPTION_KEY, settings.SECRET_KEY)


class EncryptedTextField(models.TextField):
    """A text column stored as a Fernet token; Python code sees the plaintext.

    The database (and any dump of it) holds only ciphertext. Rotating the key means
    re-saving the rows with the new key; a token that no longer decrypts reads as ``""``
    rather than crashing an admin page.
    """

    PREFIX = "fernet:"

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        if not value.startswith(self.PREFIX):
            return value
        try:
            return fernet().decrypt(value[len(self.PREFIX):].encode()).decode()
        except InvalidToken:
            return ""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return self.PREFIX + fernet().encrypt(value.encode()).decode()
