"""OAuth2 bearer tokens for DICOMweb: the client-credentials and refresh-token flows.

A :class:`OAuth2Bearer` is a ``requests`` auth hook. It asks the token endpoint for an
access token before the first request, asks again shortly before the token expires,
and when the server answers 401 (a token revoked or expired early) it asks once more
and resends the request. With a refresh token the refresh-token grant is used (and a
rotated refresh token is kept); otherwise the client-credentials grant.

oauthlib builds the token requests and parses the answers (the RFC 6749 error codes);
requests carries them, through the same TLS settings as the DICOMweb session. Secrets
are never part of a message: a failure names the grant and the provider's error code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error, WebApplicationClient

from dicomflow.errors import ConfigError, SourceError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Ask for a new token this long before the old one expires (at most a fifth of its life).
EARLY_SECONDS = 30.0


class TokenError(SourceError):
    """The token endpoint could not be reached, or refused to issue a token."""


def check_token_url(url: str) -> None:
    """A token endpoint must be HTTPS (the client secret crosses it), except on loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in LOOPBACK:
        return
    raise ConfigError("the OAuth2 token URL must be https:// (plain http only on loopback)")


@dataclass(frozen=True)
class TokenGrant:
    """How to obtain access tokens: the endpoint, the client, and the grant's secrets."""

    token_url: str
    client_id: str
    client_secret: str | None
    refresh_token: str | None = None
    scope: str | None = None

    @property
    def name(self) -> str:
        return "refresh token" if self.refresh_token else "client credentials"


class OAuth2Bearer(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer …`` to each request, renewing the token on expiry
    and once on a 401 answer. Safe to share between threads."""

    def __init__(self, grant: TokenGrant, *, verify: Any = True, timeout: float = 30.0) -> None:
        self._grant = grant
        self._refresh_token = grant.refresh_token
        self._verify = verify
        self._timeout = timeout
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._renew_at = 0.0
        self.issued = 0  # tokens obtained so far

    def __repr__(self) -> str:  # never the tokens
        return f"OAuth2Bearer({self._grant.name}, client_id={self._grant.client_id!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._current()}"
        request.register_hook("response", self._retry_unauthorized)
        return request

    def _current(self, *, stale: str | None = None) -> str:
        """A valid access token; a new one when it is due, or when ``stale`` was refused."""
        with self._lock:
            due = time.monotonic() >= self._renew_at
            if self._access_token is None or due or self._access_token == stale:
                self._obtain()
            assert self._access_token is not None
            return self._access_token

    def _obtain(self) -> None:
        grant = self._grant
        # A confidential client authenticates with HTTP Basic; a public one names itself.
        auth = (grant.client_id, grant.client_secret) if grant.client_secret else None
        named = {} if auth else {"client_id": grant.client_id}
        if self._refresh_token:
            client: Any = WebApplicationClient(grant.client_id)
            body = client.prepare_refresh_body(
                refresh_token=self._refresh_token, scope=grant.scope, **named
            )
        else:
            client = BackendApplicationClient(grant.client_id)
            body = client.prepare_request_body(scope=grant.scope, **named)
        try:
            answer = requests.post(
                grant.token_url,
                data=body,
                auth=auth,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                verify=self._verify,
                timeout=self._timeout,
            )
            token = client.parse_request_body_response(answer.text)
        except OAuth2Error as exc:
            raise TokenError(
                f"OAuth2 token endpoint refused the {grant.name} grant: {exc.error}"
            ) from None
        except requests.RequestException as exc:
            raise TokenError(
                f"OAuth2 token endpoint cannot be reached ({type(exc).__name__})"
            ) from None
        except ValueError:  # not JSON: a login page, a proxy's error
            raise TokenError(
                f"OAuth2 token endpoint answered HTTP {answer.status_code} without a token"
            ) from None
        lifetime = float(token.get("expires_in") or 3600)
        self._access_token = str(token["access_token"])
        self._renew_at = time.monotonic() + lifetime - min(EARLY_SECONDS, lifetime / 5)
        self._refresh_token = token.get("refresh_token") or self._refresh_token
        self.issued += 1

    def _retry_unauthorized(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """On a 401 to a request this auth signed, renew the token and resend the request
        once (a streamed body is not resent: the token is renewed for the next one)."""
        request = response.request
        if response.status_code != 401:  # the resent request's answer never comes back here
            return response
        header = str(request.headers.get("Authorization", ""))
        if not header.startswith("Bearer "):
            # Not a request we signed: requests dropped our header on a redirect to
            # another host, which must never be given the token.
            return response
        token = self._current(stale=header.removeprefix("Bearer "))
        if request.body is not None and not isinstance(request.body, bytes | str):
            return response  # a streamed body cannot be sent twice; the next request can
        response.content  # noqa: B018 (read the answer so the connection can be reused)
        response.close()
        again = request.copy()
        again.headers["Authorization"] = f"Bearer {token}"
        assert response.connection is not None
        resent = response.connection.send(again, **kwargs)
        resent.history.append(response)
        resent.request = again
        return resent
