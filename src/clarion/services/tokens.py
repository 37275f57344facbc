"""User tokens: short-lived JWTs an app holds to act as one user of one tenant.

Two kinds of key, each with its algorithm pinned, never read from the token (RFC 8725 §3.1):

- ``kid: "<tenant id>"``: HS256 with the tenant's secret (what Clarion issues, or the tenant
  signs with the secret it was given);
- ``kid: "<tenant id>:<key name>"``: ES256 or RS256 with a public key the tenant registered,
  for tenants that sign tokens themselves and would rather not share a secret.

The key is found from the header before anything is trusted; the signed ``tid`` claim must then
name the same tenant. ``exp`` is required; ``aud`` and ``iss`` are checked, with a leeway of at
most 60 s for clock skew. ``jku``, ``jwk`` and ``x5u`` headers are never followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clarion.domain import errors, identifiers
from clarion.services.ports import Clock, Store, TokenKey

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


@dataclass(frozen=True, slots=True)
class Principal:
    """A user acting with a valid token: the identity plus the user's internal id."""

    tenant_id: str
    user_id: int
    user: str
    expires_at: datetime


KEY_ALGORITHMS = frozenset({"ES256", "RS256"})


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
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise errors.InvalidUserToken("token is not a Clarion user token")
        tenant_id, _, key_name = kid.partition(":")
        algorithm, key = await self._key_for(tenant_id, key_name)
        if header.get("alg") != algorithm:
            raise errors.InvalidUserToken(f"this key only verifies {algorithm} tokens")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
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
        if not identifiers.is_valid_key(claims["sub"]):
            raise errors.InvalidUserToken("'sub' is not a valid user id")
        return Identity(
            tenant_id=tenant_id,
            user=claims["sub"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )

    async def _key_for(self, tenant_id: str, key_name: str) -> tuple[str, str]:
        if not key_name:
            secret = await self._store.tenant_secret(tenant_id)
            if secret is None:
                raise errors.InvalidUserToken("token is not a Clarion user token")
            return ALGORITHM, secret
        registered = await self._store.token_key(tenant_id, key_name)
        if registered is None:
            raise errors.InvalidUserToken("token names a key that is not registered")
        return registered.algorithm, registered.public_key

    async def authenticate(self, token: str) -> Principal:
        """The user a token acts for, created if the tenant names them for the first time.

        Raises:
            errors.InvalidUserToken: the token is bad.
        """
        identity = await self.verify(token)
        # A read first: a known user (nearly every request) takes no write lock.
        known = await self._store.get_user(identity.tenant_id, identity.user)
        user_id = (
            known.id
            if known is not None
            else await self._store.ensure_user(identity.tenant_id, identity.user, self._clock.now())
        )
        return Principal(identity.tenant_id, user_id, identity.user, identity.expires_at)

    async def register_key(
        self, tenant_id: str, name: str, *, algorithm: str, public_key: str
    ) -> bool:
        """Register (or replace) a public key for tokens the tenant signs; True if new.

        Raises:
            errors.InvalidRequest: the algorithm is not ES256/RS256, or the key does not fit it.
        """
        if algorithm not in KEY_ALGORITHMS:
            raise errors.InvalidRequest("algorithm must be ES256 or RS256")
        problem = _key_problem(algorithm, public_key)
        if problem:
            raise errors.InvalidRequest(problem)
        return await self._store.put_token_key(
            tenant_id, name, algorithm=algorithm, public_key=public_key, now=self._clock.now()
        )

    async def keys(self, tenant_id: str) -> list[TokenKey]:
        """The tenant's registered public keys."""
        return await self._store.token_keys(tenant_id)

    async def key(self, tenant_id: str, name: str) -> TokenKey:
        """One registered key.

        Raises:
            errors.NotFound: no such key in this tenant.
        """
        key = await self._store.token_key(tenant_id, name)
        if key is None:
            raise errors.NotFound("no such token key")
        return key

    async def forget_key(self, tenant_id: str, name: str) -> None:
        """Forget a key; tokens it signed stop working at once.

        Raises:
            errors.NotFound: no such key in this tenant.
        """
        if not await self._store.delete_token_key(tenant_id, name):
            raise errors.NotFound("no such token key")


def _key_problem(algorithm: str, public_key: str) -> str | None:
    """Why `public_key` cannot verify `algorithm` tokens, or None when it can."""
    try:
        key = serialization.load_pem_public_key(public_key.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "public_key must be a PEM-encoded public key"
    if algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            return "ES256 needs a P-256 (secp256r1) public key"
    elif not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        return "RS256 needs an RSA public key of at least 2048 bits"
    return None
