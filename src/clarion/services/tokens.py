"""User tokens: short-lived JWTs an app holds to open the gateway as one user of one tenant.

HS256 with the tenant's secret, pinned: the algorithm is never read from the token. The
header's ``kid`` names the tenant so the right secret is found before anything is trusted;
the signed ``tid`` claim must then agree with it. ``exp`` is required; ``aud`` and ``iss`` are
checked, with a small leeway for clock skew (RFC 8725 §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from clarion.domain import errors
from clarion.services.ports import Clock, Store

ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token and when it stops working."""

    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for."""

    tenant_id: str
    user: str
    expires_at: datetime


class UserTokens:
    """Issues and verifies user tokens."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        issuer: str,
        audience: str,
        default_ttl: int,
        max_ttl: int,
        leeway: int,
    ) -> None:
        self._store = store
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._leeway = leeway

    async def issue(self, tenant_id: str, user: str, ttl_seconds: int | None = None) -> IssuedToken:
        """A token for `user`, valid `ttl_seconds` (bounded by the configured maximum).

        Raises:
            errors.InvalidRequest: the ttl is out of bounds.
        """
        ttl = self._default_ttl if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= self._max_ttl:
            raise errors.InvalidRequest(f"ttl must be between 1 and {self._max_ttl} seconds")
        secret = await self._store.tenant_secret(tenant_id)
        if secret is None:
            raise errors.NotFound("no such tenant")
        now = self._clock.now()
        expires = now + timedelta(seconds=ttl)
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user,
            "tid": tenant_id,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
        }
        token = jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": tenant_id})
        return IssuedToken(token=token, expires_at=expires.replace(microsecond=0))

    async def verify(self, token: str) -> Identity:
        """Who `token` speaks for.

        Raises:
            errors.InvalidUserToken: anything wrong with it; the reason is in the message.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise errors.InvalidUserToken("token is not a JWT") from exc
        tenant_id = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(tenant_id, str):
            raise errors.InvalidUserToken("token is not a Clarion user token")
        secret = await self._store.tenant_secret(tenant_id)
        if secret is None:
            raise errors.InvalidUserToken("token is not a Clarion user token")
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "tid", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise errors.InvalidUserToken("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise errors.InvalidUserToken(f"token rejected: {exc}") from exc
        if claims["tid"] != tenant_id or not isinstance(claims["sub"], str):
            raise errors.InvalidUserToken("token is not a Clarion user token")
        return Identity(
            tenant_id=tenant_id,
            user=claims["sub"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
