"""The SIMULATED upstream's Vertex AI, so a ``vertex`` provider can be tested over real HTTP:
an OAuth token endpoint for service accounts, and the Gemini API's answers at Vertex's URLs.
The provider's base URL is the simulator's root; its key's ``token_uri`` is ``{root}/token``.

    POST /token            the JWT bearer grant (form fields ``grant_type`` =
                           urn:ietf:params:oauth:grant-type:jwt-bearer and ``assertion``): the
                           assertion is an RS256 JWT whose ``iss`` is a registered service
                           account, signed with its private key (checked with its public key),
                           whose ``aud`` is Google's token URI or this URL, with the cloud-platform scope and an
                           ``exp`` to come. Answers {"access_token", "expires_in", "token_type"};
                           anything wrong is 400 ``invalid_grant``, as Google answers.
    POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}
         :generateContent, :streamGenerateContent?alt=sse
                           the Gemini API's answer (``apps.simulator.gemini``: the same checks,
                           formulas, usage and faults) for a request with ``Authorization:
                           Bearer <token>`` of a token granted here and not expired; none, an
                           unknown or an expired one is 401 UNAUTHENTICATED; another project
                           than the account's is 403 PERMISSION_DENIED

Control (tests register the accounts whose keys they generate)
    POST /_sim/vertex/accounts  {"client_email", "public_key" (PEM), "project_id",
                                 "expires_in": seconds the tokens last (3600),
                                 "grant_delay_ms": how long a grant takes (0)}
    GET  /_sim/vertex/accounts/{client_email}
                                {"grants", "renewed_early" (grants made while the account's
                                 last token was still live), "refused" (401s at the Vertex
                                 URLs), "tokens_used" (distinct tokens its accepted requests
                                 came with)}
    POST /_sim/vertex/accounts/{client_email}/revoke
                                its tokens revoked: requests with them are 401 (counted as
                                "refused")

``POST /_sim/reset`` forgets the accounts, their tokens and counters.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apps.simulator.answers import dumps, loads
from apps.simulator.control import HEADERS
from apps.simulator.gemini import GeminiAPI, google_error

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The audience google-auth signs for whatever the key's token_uri (Google takes it), or this URL.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105  # nosec B105: a URL, not a secret
SKEW = 300  # seconds a JWT's iat may be ahead of this clock


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _invalid_grant(description: str) -> web.Response:
    return web.Response(status=400, body=dumps({"error": "invalid_grant", "error_description": description}),
                        content_type="application/json", headers=HEADERS)


class VertexAPI:
    """The token endpoint and the Vertex URLs, on the :class:`Simulator`'s state."""

    def __init__(self, simulator: Simulator, gemini: GeminiAPI) -> None:
        self.simulator = simulator
        self.gemini = gemini

    async def account_add(self, request: web.Request) -> web.Response:
        """``POST /_sim/vertex/accounts``."""
        try:
            body = loads(await request.read())
            key = serialization.load_pem_public_key(body["public_key"].encode())
            if not isinstance(key, rsa.RSAPublicKey):
                raise TypeError("not an RSA key")
            account = {"public_key": key, "project_id": str(body["project_id"]),
                       "expires_in": body.get("expires_in", 3600), "grant_delay_ms": body.get("grant_delay_ms", 0),
                       "grants": 0, "renewed_early": 0, "refused": 0, "tokens_used": set(), "live_until": 0.0}
            email = str(body["client_email"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad account: {exc}"}, status=400, headers=HEADERS)
        self.simulator.state.service_accounts[email] = account
        return web.json_response({"client_email": email}, headers=HEADERS)

    async def account_get(self, request: web.Request) -> web.Response:
        """``GET /_sim/vertex/accounts/{email}``."""
        account = self.simulator.state.service_accounts.get(request.match_info["email"])
        if account is None:
            return web.json_response({"error": "no such account"}, status=404, headers=HEADERS)
        return web.json_response({"grants": account["grants"], "renewed_early": account["renewed_early"],
                                  "refused": account["refused"], "tokens_used": len(account["tokens_used"])},
                                 headers=HEADERS)

    async def account_revoke(self, request: web.Request) -> web.Response:
        """``POST /_sim/vertex/accounts/{email}/revoke``."""
        state = self.simulator.state
        email = request.match_info["email"]
        revoked = [token for token, (owner, _) in state.access_tokens.items() if owner == email]
        for token in revoked:
            state.access_tokens[token] = (email, 0.0)  # known, so a request with it counts as refused
        return web.json_response({"revoked": len(revoked)}, headers=HEADERS)

    async def token(self, request: web.Request) -> web.Response:
        """``POST /token``: a JWT bearer grant."""
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.Response(status=400, body=dumps({"error": "unsupported_grant_type"}),
                                content_type="application/json", headers=HEADERS)
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or assertion.count(".") != 2:
            return _invalid_grant("Invalid JWT: the assertion is not a JWT.")
        head, claims_part, signature = assertion.split(".")
        try:
            header, claims = loads(_b64url(head)), loads(_b64url(claims_part))
            signed = _b64url(signature)
        except ValueError:
            return _invalid_grant("Invalid JWT: a segment is not base64url JSON.")
        state = self.simulator.state
        account = state.service_accounts.get(claims.get("iss")) if isinstance(claims, dict) else None
        if not isinstance(header, dict) or header.get("alg") != "RS256" or account is None:
            return _invalid_grant("Invalid JWT: unknown issuer or algorithm.")
        try:
            account["public_key"].verify(signed, f"{head}.{claims_part}".encode(), padding.PKCS1v15(),
                                         hashes.SHA256())
        except InvalidSignature:
            return _invalid_grant("Invalid JWT Signature.")
        now = time.time()
        if claims.get("aud") not in (GOOGLE_TOKEN_URI, str(request.url)):
            return _invalid_grant(f"Invalid JWT: the audience is neither {GOOGLE_TOKEN_URI} nor {request.url}.")
        if SCOPE not in str(claims.get("scope") or "").split():
            return _invalid_grant("Invalid JWT: the cloud-platform scope is not asked for.")
        if not (isinstance(claims.get("exp"), int) and isinstance(claims.get("iat"), int)
                and claims["iat"] <= now + SKEW and now < claims["exp"]):
            return _invalid_grant("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
        email = claims["iss"]
        if account["grant_delay_ms"]:
            await asyncio.sleep(account["grant_delay_ms"] / 1000)
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        granted_at = time.monotonic()
        if granted_at < account["live_until"]:
            account["renewed_early"] += 1  # the account's last token had time left
        account["live_until"] = granted_at + account["expires_in"]
        state.access_tokens[token] = (email, account["live_until"])
        account["grants"] += 1
        granted = {"access_token": token, "expires_in": account["expires_in"], "token_type": "Bearer"}  # nosec B105
        return web.json_response(granted, headers=HEADERS)

    def _refused(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries a live token granted here; 403 for another project."""
        state = self.simulator.state
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        granted = state.access_tokens.get(token)
        if granted is None or time.monotonic() >= granted[1]:
            if granted is not None:
                state.service_accounts[granted[0]]["refused"] += 1
            return google_error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                     "token, login cookie or other valid authentication credential.")
        account = state.service_accounts[granted[0]]
        if request.match_info["project"] != account["project_id"]:
            return google_error(403, f"Permission denied on resource project {request.match_info['project']}.")
        account["tokens_used"].add(token)
        return None

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:...``."""
        return await self.gemini.generate(request, refuse=self._refused)


def vertex_routes(app: web.Application, simulator: Simulator) -> None:
    """Add Vertex AI and its token endpoint to a simulator's application."""
    api = VertexAPI(simulator, GeminiAPI(simulator))
    app.router.add_post("/token", api.token)
    app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/google/models/{target}", api.generate)
    app.router.add_post("/_sim/vertex/accounts", api.account_add)
    app.router.add_get("/_sim/vertex/accounts/{email}", api.account_get)
    app.router.add_post("/_sim/vertex/accounts/{email}/revoke", api.account_revoke)
