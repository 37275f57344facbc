"""SMTP: a thin shell over `clarion.wire.email` on aiosmtplib, with pooled sessions.

Per message: ``MAIL FROM``, ``RCPT TO``, ``DATA`` (RFC 5321 §3.3), each reply classified by
`wire.email.classify_smtp_reply` at its stage, so a ``550 5.1.1`` at RCPT is a bounce, a ``451``
a retry, a ``535`` at AUTH the credential's fault. Sessions are pooled per credential version
and reused for many messages. A transaction that ended with DATA's final reply leaves nothing
to clear, so the next one starts with ``MAIL`` at once; only one a refusal cut short is cleared
with ``RSET`` first (RFC 5321 §4.1.1.5). A reused session found closed at ``MAIL`` (the
connection gone, or a ``421``) has carried nothing of the message: it is dropped and the message
goes on another session.

**Cost per message.** A batch is sent by at most ``connections_per_host`` worker coroutines
taking its messages in turn, not by a task per message; one `asyncio.timeout` bounds each
message, and aiosmtplib gets no timeout of its own (its per-command `asyncio.wait_for` would be
a second timer per command for the same bound).

**TLS is never optional.** ``starttls`` means STARTTLS is *required* (RFC 3207; protocols.md
§5.3: opportunistic STARTTLS is strippable): a server that does not offer it gets nothing, and
the outcome is `AuthFailed` (pause the credential, tell the tenant), never a silent plaintext
send. ``tls`` is implicit TLS (RFC 8314). Certificates are verified against the host *name*.
AUTH is refused over a plain connection (the vault refuses such credentials already).

**SSRF guard.** The relay's host comes from the tenant: it is resolved here, every address is
checked (`wire.webhooks.vet_addresses`: no loopback, private, link-local... unless the operator
allows the network) and the socket is connected to a checked address, so a second DNS answer
cannot slip a private one in. A refused host is `AuthFailed`: every message on the credential
would fail alike.

**Pools are per credential version**, not merely per (host, port, security, username): an
authenticated session belongs to the credential that authenticated it, so another tenant naming
the same relay and user with a wrong password never rides on it, and a replaced password is
used from the next session on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime

import aiosmtplib

from clarion.domain import errors
from clarion.domain.outcomes import AuthFailed, Delivered, Outcome, Rejected, RetryLater
from clarion.domain.records import Credential
from clarion.wire import email as wire, webhooks
from clarion.wire.email import Email, SmtpStage

KIND = "smtp"
SECURITY = ("starttls", "tls", "none")
IDLE_SECONDS = 30.0
"""A pooled session idle this long is closed rather than reused: relays drop idle clients (RFC
5321 §4.5.3.2.7 asks for at least 5 minutes; many use less), and a command on a session the
server is closing fails."""
MAX_MESSAGES_PER_SESSION = 100
"""Then a new session: relays commonly cap messages per connection (Exchange Online, Postfix's
``smtpd_client_message_rate_limit`` setups) and answer 421 past it."""
QUIT_SECONDS = 2.0
FAILURE_MEMORY_SECONDS = 10.0
"""A session that could not be set up (refused AUTH, no STARTTLS, relay down) is the answer for
every message of the credential queued behind it for this long: a batch of a hundred messages
makes one failed login, not a hundred (which relays punish by locking the account)."""
MAX_REFERENCE_CHARS = 255
"""The registry's reference column."""


class _Unusable(Exception):
    """No session could be set up; `outcome` is what every message waiting for it gets."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome


@dataclasses.dataclass(frozen=True, slots=True)
class _Key:
    credential_id: str
    version: datetime
    host: str
    port: int
    security: str
    username: str | None


class _Session:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.messages = 0
        self.needs_reset = False
        """A refusal left a transaction open: RSET before the next one."""
        self.idle_since = time.monotonic()

    @property
    def reusable(self) -> bool:
        return (
            self.client.is_connected
            and self.messages < MAX_MESSAGES_PER_SESSION
            and time.monotonic() - self.idle_since < IDLE_SECONDS
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(QUIT_SECONDS):
                await self.client.quit()
        self.close()


class _Pool:
    def __init__(self, size: int) -> None:
        self.gate = asyncio.Semaphore(size)
        self.idle: deque[_Session] = deque()
        self.failure: tuple[Outcome, float] | None = None

    def failed(self) -> Outcome | None:
        if self.failure is None or time.monotonic() >= self.failure[1]:
            return None
        return self.failure[0]


class SmtpMailer:
    """The `Mailer` for ``smtp`` credentials (RFC 5321, 3207, 4954, 8314; protocols.md §5.3).

    Args:
        ssl_context: the CAs to trust (an emulator's certificate in tests); system CAs by default.
        allowed_networks: networks a tenant's relay may resolve into despite the SSRF guard.
        connect_timeout: TCP, TLS, greeting, EHLO, STARTTLS and AUTH of one new session.
        request_timeout: one message, from waiting for a session to the end of DATA (a
            message waits only once a worker of its batch has taken it up).
        connections_per_host: sessions per credential at once; messages queue for a free one.
        max_concurrency: messages in flight at once across all credentials.
        helo_name: the EHLO name; None: this machine's FQDN (aiosmtplib's default).
    """

    kind = KIND

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allowed_networks: Sequence[webhooks.IPNetwork] = (),
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        connections_per_host: int = 4,
        max_concurrency: int = 128,
        helo_name: str | None = None,
    ) -> None:
        self._context = ssl_context or ssl.create_default_context()
        self._allowed = tuple(allowed_networks)
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._per_host = connections_per_host
        self._overall = asyncio.Semaphore(max_concurrency)
        self._helo = helo_name
        self._pools: dict[_Key, _Pool] = {}
        self._closed = False
        self.sessions_opened = 0
        """Sessions set up so far (how well pooling works shows as messages per session)."""

    async def send(self, credential: Credential, emails: Sequence[Email]) -> list[Outcome]:
        """One outcome per email, in order, sent concurrently over up to
        ``connections_per_host`` pooled sessions; never raises for what the relay or the
        network do."""
        try:
            key = _key_of(credential)
        except _Unusable as exc:
            return [exc.outcome] * len(emails)
        pool = self._pool(key)
        results: list[Outcome | None] = [None] * len(emails)
        jobs: list[tuple[int, str, str, bytes]] = []
        for index, email in enumerate(emails):
            try:
                sender = wire.normalize_address(email.sender.address)
                recipient = wire.normalize_address(email.to.address)
                jobs.append((index, sender, recipient, wire.render_message(email)))
            except errors.InvalidRequest as exc:
                results[index] = Rejected(exc.message)
        queue = iter(jobs)  # shared by the workers: each takes the next message when free

        async def work() -> None:
            for index, sender, recipient, message in queue:
                results[index] = await self._send_one(
                    key, pool, credential.secret, sender, recipient, message
                )

        workers = min(len(jobs), self._per_host)
        if workers == 1:
            await work()
        elif workers > 1:
            await asyncio.gather(*(work() for _ in range(workers)))
        return [_naming(outcome, credential) for outcome in results if outcome is not None]

    def _pool(self, key: _Key) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            for stale in [k for k in self._pools if k.credential_id == key.credential_id]:
                # A replaced credential: its old sessions authenticated with the old secret.
                for session in self._pools.pop(stale).idle:
                    session.close()
            pool = self._pools[key] = _Pool(self._per_host)
        return pool

    async def _send_one(
        self, key: _Key, pool: _Pool, password: str, sender: str, recipient: str, message: bytes
    ) -> Outcome:
        try:
            async with asyncio.timeout(self._request_timeout), pool.gate, self._overall:
                while True:
                    session = await self._take(pool)
                    if session is None:
                        failed = pool.failed()
                        if failed is not None:
                            return failed
                        try:
                            session = await self._open(key, password)
                        except _Unusable as exc:
                            pool.failure = (exc.outcome, time.monotonic() + FAILURE_MEMORY_SECONDS)
                            raise
                        pool.failure = None
                    try:
                        done = await _transaction(session, sender, recipient, message)
                    except BaseException:
                        session.close()
                        raise
                    if done is None:
                        # A reused session found closed at MAIL: nothing of the message went
                        # out on it. Another idle one, or a new one (which never ends here).
                        session.close()
                        continue
                    outcome, reusable = done
                    self._give_back(key, pool, session, reusable)
                    return outcome
        except _Unusable as exc:
            return exc.outcome
        except TimeoutError:
            return RetryLater(f"SMTP: no answer within {self._request_timeout:g} s")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return RetryLater(f"SMTP: the connection failed: {_describe(exc)}")

    async def _take(self, pool: _Pool) -> _Session | None:
        while pool.idle:
            session = pool.idle.pop()  # the most recently used: the least likely to be stale
            if not session.reusable:
                session.close()
                continue
            if session.needs_reset:
                try:
                    await session.client.rset()
                except (aiosmtplib.SMTPException, OSError):
                    session.close()  # gone or confused: nothing of the message was sent on it
                    continue
                session.needs_reset = False
            return session
        return None

    def _give_back(self, key: _Key, pool: _Pool, session: _Session, reusable: bool) -> None:
        # A pool dropped meanwhile (its credential was replaced) takes nothing back.
        if self._closed or not reusable or not session.reusable or self._pools.get(key) is not pool:
            session.close()
            return
        session.idle_since = time.monotonic()
        pool.idle.append(session)

    async def _open(self, key: _Key, password: str) -> _Session:
        addresses = await self._vetted(key)
        if self._helo is None:
            # aiosmtplib would look the FQDN up (in a thread) for every session; once will do.
            self._helo = await asyncio.to_thread(socket.getfqdn)
        stage = SmtpStage.CONNECT
        client: aiosmtplib.SMTP | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                sock = await _dial(addresses, key.port)
                client = aiosmtplib.SMTP(
                    hostname=key.host,  # what TLS verifies and sends as SNI
                    sock=sock,
                    use_tls=key.security == "tls",
                    start_tls=False,  # done below, required, never opportunistic
                    tls_context=self._context,
                    timeout=None,  # bounded by our own timeouts, one per message or session
                    local_hostname=self._helo,
                )
                self.sessions_opened += 1
                await client.connect()
                stage = SmtpStage.EHLO
                await client.ehlo()
                if key.security == "starttls":
                    if not client.supports_extension("starttls"):
                        raise _Unusable(
                            AuthFailed(
                                "the SMTP server does not offer STARTTLS, which this credential "
                                "requires (security: starttls); nothing was sent in clear"
                            )
                        )
                    stage = SmtpStage.STARTTLS
                    await client.starttls()
                    stage = SmtpStage.EHLO
                    await client.ehlo()  # RFC 3207 §4.2: forget what was said in clear
                if key.username is not None:
                    stage = SmtpStage.AUTH
                    if key.security == "none" or client.get_transport_info("sslcontext") is None:
                        raise _Unusable(AuthFailed("AUTH is never sent over a plain connection"))
                    if not client.supports_extension("auth"):
                        raise _Unusable(AuthFailed("the SMTP server offers no AUTH"))
                    await client.login(key.username, password)
        except _Unusable:
            _close(client)
            raise
        except aiosmtplib.SMTPResponseException as exc:
            _close(client)
            outcome = wire.classify_smtp_reply(exc.code, exc.message, stage=stage)
            raise _Unusable(outcome or RetryLater(f"SMTP {exc.code} at {stage}")) from None
        except TimeoutError:
            _close(client)
            raise _Unusable(
                RetryLater(f"SMTP: no session within {self._connect_timeout:g} s ({stage})")
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            _close(client)
            invalid = _certificate_error(exc)
            if invalid is not None:
                # The server cannot prove it is the host: nothing is sent to it, and retrying
                # will not change its certificate.
                raise _Unusable(
                    AuthFailed(f"TLS: the SMTP server's certificate was refused: {invalid}")
                ) from None
            raise _Unusable(RetryLater(f"SMTP: {stage} failed: {_describe(exc)}")) from None
        return _Session(client)

    async def _vetted(self, key: _Key) -> list[webhooks.IPAddress]:
        name = key.host.strip("[]")
        try:
            literal: webhooks.IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[webhooks.IPAddress] = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    name, key.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except OSError as exc:
                raise _Unusable(
                    RetryLater(f"SMTP: {name} does not resolve: {_describe(exc)}")
                ) from None
            found: dict[webhooks.IPAddress, None] = {}
            for _family, _type, _proto, _name, sockaddr in infos:
                found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
            addresses = list(found)
        target = webhooks.Target(scheme="smtp", host=name, port=key.port, literal=literal)
        why = webhooks.vet_addresses(target, addresses, self._allowed)
        if why is not None:
            raise _Unusable(AuthFailed(f"the SMTP host is refused: {why}"))
        return addresses

    async def close(self) -> None:
        """QUIT and close every idle session (those in use close when their message ends)."""
        self._closed = True
        sessions = [s for pool in self._pools.values() for s in pool.idle]
        self._pools.clear()
        await asyncio.gather(*(s.quit() for s in sessions))


async def _transaction(
    session: _Session, sender: str, recipient: str, message: bytes
) -> tuple[Outcome, bool] | None:
    """One MAIL/RCPT/DATA transaction: its outcome, and whether the session may be reused;
    None when a reused session is found closed at MAIL, before anything of the message."""
    client = session.client
    reused = session.messages > 0
    session.messages += 1
    stage = SmtpStage.MAIL
    try:
        # MAIL and RCPT by hand: `client.mail`/`rcpt` re-parse each address with the `email`
        # package (about a tenth of the client's CPU); ours are checked ASCII addr-specs.
        reply = await client.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode("ascii"))
        if reply.code != 250:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        stage = SmtpStage.RCPT
        reply = await client.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode("ascii"))
        if reply.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        stage = SmtpStage.DATA
        reply = await client.data(message)
    except aiosmtplib.SMTPResponseException as exc:
        if reused and stage is SmtpStage.MAIL and exc.code == 421:
            return None  # the relay ended the idle session meanwhile (RFC 5321 §3.8)
        outcome = wire.classify_smtp_reply(exc.code, exc.message, stage=stage)
        # A refusal may leave the transaction open: the session's next one starts with RSET.
        # 421: the server is closing the channel (RFC 5321 §3.8).
        session.needs_reset = True
        return outcome or RetryLater(f"SMTP {exc.code} at {stage}"), exc.code != 421
    except OSError:  # aiosmtplib's SMTPServerDisconnected is a ConnectionError
        if reused and stage is SmtpStage.MAIL:
            return None
        raise
    outcome = wire.classify_smtp_reply(reply.code, reply.message, stage=SmtpStage.DATA)
    if isinstance(outcome, Delivered) and outcome.reference is not None:
        outcome = Delivered(reference=outcome.reference[:MAX_REFERENCE_CHARS])
    return outcome or RetryLater(f"SMTP {reply.code} after DATA"), True


async def _dial(addresses: Sequence[webhooks.IPAddress], port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    failure: OSError = OSError("no address")
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (str(address), port))
        except OSError as exc:
            sock.close()
            failure = exc  # nothing was sent: the next checked address may answer
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure


def _key_of(credential: Credential) -> _Key:
    info = credential.info
    metadata = info.metadata
    host, port, security = metadata.get("host"), metadata.get("port"), metadata.get("security")
    username = metadata.get("username")
    if (
        metadata.get("kind") != KIND
        or not isinstance(host, str)
        or not host
        or not isinstance(port, int)
        or security not in SECURITY
        or not (username is None or isinstance(username, str))
    ):
        raise _Unusable(AuthFailed("not a usable SMTP credential", info.id))
    if username is not None and security == "none":
        raise _Unusable(AuthFailed("AUTH is never sent over a plain connection", info.id))
    return _Key(info.id, info.updated_at, host.lower(), port, str(security), username)


def _naming(outcome: Outcome, credential: Credential) -> Outcome:
    if isinstance(outcome, AuthFailed) and outcome.credential_id is None:
        return dataclasses.replace(outcome, credential_id=credential.info.id)
    return outcome


def _certificate_error(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    for _ in range(5):  # aiosmtplib wraps the ssl error once or twice
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or "certificate verify failed"
        seen = seen.__cause__ or seen.__context__
    return None


def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
