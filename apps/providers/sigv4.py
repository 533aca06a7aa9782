"""AWS Signature Version 4 for providers that take it (Amazon Bedrock), by botocore's own signer."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

if TYPE_CHECKING:
    from apps.providers.transport import ProviderConfig

DEFAULT_REGION = "us-east-1"
_REGION = re.compile(r"^bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")


def region_of(base_url: str) -> str:
    match = _REGION.match(urlsplit(base_url).hostname or "")
    return match.group(1) if match else DEFAULT_REGION


def signed_headers(provider: ProviderConfig, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with AWS SigV4's (X-Amz-Date, Authorization, X-Amz-Security-Token), signed by botocore."""
    access, _, rest = provider.credential.partition(":")
    secret, _, token = rest.partition(":")
    request = AWSRequest(method="POST", url=provider.base_url.rstrip("/") + path, data=body, headers=dict(headers))
    SigV4Auth(Credentials(access, secret, token or None), "bedrock", region_of(provider.base_url)).add_auth(request)
    return dict(request.headers.items())
