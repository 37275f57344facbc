"""``clarion emulate ...``: local provider emulators for development, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Run a local provider emulator (see docs/emulators.md).", no_args_is_help=True
)

ControlPort = Annotated[
    int, typer.Option(help="HTTP/1.1 JSON control API port (0 = any free port).")
]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
PlainTls = Annotated[
    bool, typer.Option("--tls/--plain", help="HTTPS, or plain HTTP (benchmarks only).")
]
CertFile = Annotated[
    Path | None, typer.Option(help="PEM certificate to serve (default: a generated one).")
]
KeyFile = Annotated[Path | None, typer.Option(help="PEM private key for --cert-file.")]
CertOut = Annotated[
    Path | None, typer.Option(help="Write the served certificate here, for clients to trust.")
]
LatencyMs = Annotated[float, typer.Option(help="Delay before every answer.")]


@contextlib.contextmanager
def _starting(name: str) -> Iterator[None]:
    """Turn a bad option or unreadable file while building the emulator into exit status 2."""
    try:
        yield
    except (ValueError, OSError) as exc:
        typer.echo(f"cannot start the {name} emulator: {exc}", err=True)
        raise typer.Exit(2) from exc


def _aligned(*rows: tuple[str, str]) -> list[str]:
    width = max(len(label) for label, _ in rows) + 1
    return [f"{label + ':':<{width}} {value}" for label, value in rows]


@app.command("apns")
def apns(
    port: Annotated[int, typer.Option(help="HTTP/2 push port (0 = any free port).")] = 2197,
    control_port: ControlPort = 2198,
    host: Host = "127.0.0.1",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--h2c", help="TLS with ALPN h2, or cleartext HTTP/2 (prior knowledge)."
        ),
    ] = True,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
    environment: Annotated[
        str, typer.Option(help="sandbox (answers carry apns-unique-id) or production.")
    ] = "sandbox",
    key: Annotated[
        list[str] | None,
        typer.Option(help="Register a signing key: TEAM_ID:KEY_ID:path/to/key.pem (repeatable)."),
    ] = None,
    latency_ms: LatencyMs = 0.0,
) -> None:
    """Emulate the APNs provider API (token auth, header checks, stream limits, scripted faults)."""
    from clarion.emulators.apns import ApnsEmulator

    with _starting("APNs"):
        emulator = ApnsEmulator(
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            cert_file=cert_file,
            key_file=key_file,
            environment=environment,
        )
        for spec in key or []:
            team_id, key_id, path = spec.split(":", 2)
            emulator.register_key(team_id, key_id, Path(path).read_text())
    emulator.latency_ms = latency_ms

    scheme = "https" if tls else "h2c"
    _serve_until_signalled(
        emulator,
        cert_out,
        lambda: [
            ("APNs emulator", f"{scheme}://{host}:{emulator.port}/3/device/<token>"),
            _control(host, emulator),
        ],
    )


def _control(host: str, emulator: Any) -> tuple[str, str]:
    return ("control API", f"http://{host}:{emulator.control_port}/control/")


def _serve_until_signalled(
    emulator: Any, cert_out: Path | None, rows: Callable[[], list[tuple[str, str]]]
) -> None:
    """Start `emulator`, write its certificate to `cert_out`, say where it listens (`rows`,
    aligned), and serve until SIGINT or SIGTERM."""

    def announce() -> None:
        if cert_out is not None and emulator.certificate_pem is not None:
            cert_out.write_bytes(emulator.certificate_pem)
            typer.echo(f"certificate written to {cert_out}")
        for line in _aligned(*rows()):
            typer.echo(line)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await emulator.start()
        announce()
        try:
            await stop.wait()
        finally:
            await emulator.stop()

    asyncio.run(main())


@app.command("webpush")
def webpush(
    port: Annotated[int, typer.Option(help="Push service port (0 = any free port).")] = 8443,
    control_port: ControlPort = 8444,
    host: Host = "127.0.0.1",
    public_host: Annotated[
        str | None, typer.Option(help="Host name in the endpoints handed out (default: --host).")
    ] = None,
    tls: PlainTls = True,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
    latency_ms: LatencyMs = 0.0,
) -> None:
    """Emulate a browser's Web Push service (VAPID checks, RFC 8291 decryption, scripted faults)."""
    from clarion.emulators.webpush import WebPushEmulator

    with _starting("Web Push"):
        emulator = WebPushEmulator(
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            public_host=public_host,
            cert_file=cert_file,
            key_file=key_file,
        )
    emulator.latency_ms = latency_ms

    _serve_until_signalled(
        emulator,
        cert_out,
        lambda: [
            ("Web Push emulator", f"{emulator.origin}/push/<subscription>"),
            _control(host, emulator),
        ],
    )


@app.command("wns")
def wns(
    port: Annotated[int, typer.Option(help="Token and channel port (0 = any free port).")] = 8445,
    control_port: ControlPort = 8446,
    host: Host = "127.0.0.1",
    public_host: Annotated[
        str | None, typer.Option(help="Host name in the channel URIs handed out.")
    ] = None,
    tls: PlainTls = True,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
    app_credentials: Annotated[
        list[str] | None,
        typer.Option(
            "--app", help="Register an app: PACKAGE_SID=SECRET (repeatable; split at the last =)."
        ),
    ] = None,
    latency_ms: LatencyMs = 0.0,
) -> None:
    """Emulate WNS (OAuth token endpoint, channel URIs, X-WNS-* headers, scripted faults)."""
    from clarion.emulators.wns import WnsEmulator

    with _starting("WNS"):
        emulator = WnsEmulator(
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            public_host=public_host,
            cert_file=cert_file,
            key_file=key_file,
        )
        for spec in app_credentials or []:
            sid, sep, secret = spec.rpartition("=")
            if not sep or not sid:
                raise ValueError(f"--app wants PACKAGE_SID=SECRET, got {spec!r}")
            emulator.register_app(sid, secret)
    emulator.latency_ms = latency_ms

    _serve_until_signalled(
        emulator,
        cert_out,
        lambda: [
            ("WNS emulator", f"token {emulator.token_url}, channels {emulator.origin}/?token=…"),
            _control(host, emulator),
        ],
    )


@app.command("fcm")
def fcm(
    port: Annotated[
        int, typer.Option(help="HTTP/2 + HTTP/1.1 port: token and send (0 = any free port).")
    ] = 8447,
    control_port: ControlPort = 8448,
    host: Host = "127.0.0.1",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--plain",
            help="TLS (ALPN h2 or http/1.1), or cleartext (h2c prior knowledge or HTTP/1.1).",
        ),
    ] = True,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
    service_account: Annotated[
        list[str] | None,
        typer.Option(
            help="Create a service account: PROJECT_ID:path/to/write.json (repeatable); its "
            "token_uri is this emulator."
        ),
    ] = None,
    quota_per_minute: Annotated[
        int, typer.Option(help="Messages per minute per project before 429 QUOTA_EXCEEDED.")
    ] = 600_000,
    registered_only: Annotated[
        bool, typer.Option(help="Answer UNREGISTERED to tokens never registered (control API).")
    ] = False,
    latency_ms: Annotated[float, typer.Option(help="Delay before every send's answer.")] = 0.0,
) -> None:
    """Emulate FCM HTTP v1 and its OAuth token endpoint (RS256 assertions, errorCodes, quotas)."""
    import json

    from clarion.emulators.fcm import FcmEmulator

    accounts: list[tuple[str, Path]] = []
    with _starting("FCM"):
        emulator = FcmEmulator(
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            cert_file=cert_file,
            key_file=key_file,
            quota_per_minute=quota_per_minute,
            registered_only=registered_only,
        )
        for spec in service_account or []:
            project, sep, path = spec.partition(":")
            if not sep or not project or not path:
                raise ValueError(f"--service-account wants PROJECT_ID:path, got {spec!r}")
            accounts.append((project, Path(path)))
    emulator.latency_ms = latency_ms

    def rows() -> list[tuple[str, str]]:
        for project, path in accounts:
            path.write_text(json.dumps(emulator.create_service_account(project), indent=2))
            path.chmod(0o600)
            typer.echo(f"service account of {project} written to {path}")
        return [
            ("FCM emulator", f"{emulator.base_url}/v1/projects/<project>/messages:send"),
            ("OAuth tokens", emulator.token_url),
            _control(host, emulator),
        ]

    _serve_until_signalled(emulator, cert_out, rows)


def _split_pair(spec: str, option: str, what: str) -> tuple[str, str]:
    name, sep, secret = spec.partition(":")
    if not sep or not name:
        raise ValueError(f"{option} wants {what}, got {spec!r}")
    return name, secret


@app.command("smtp")
def smtp(
    port: Annotated[int, typer.Option(help="SMTP port (0 = any free port).")] = 2525,
    control_port: ControlPort = 2526,
    host: Host = "127.0.0.1",
    tls: Annotated[
        str, typer.Option(help="starttls (offered), implicit (RFC 8314) or none.")
    ] = "starttls",
    require_tls: Annotated[bool, typer.Option(help="Refuse MAIL before STARTTLS (530).")] = False,
    require_auth: Annotated[bool, typer.Option(help="Refuse MAIL before AUTH (530).")] = False,
    store_bodies: Annotated[
        bool, typer.Option(help="Keep each message whole; --no-store-bodies: envelope and size.")
    ] = True,
    user: Annotated[
        list[str] | None,
        typer.Option(help="Accept AUTH PLAIN/LOGIN as USERNAME:PASSWORD (repeatable)."),
    ] = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
) -> None:
    """Emulate an SMTP relay (STARTTLS/implicit TLS, AUTH, scripted 4xx/5xx per recipient)."""
    from clarion.emulators.smtp import SmtpEmulator

    with _starting("SMTP"):
        emulator = SmtpEmulator(
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            require_tls=require_tls,
            require_auth=require_auth,
            cert_file=cert_file,
            key_file=key_file,
            store_bodies=store_bodies,
        )
        for spec in user or []:
            emulator.add_user(*_split_pair(spec, "--user", "USERNAME:PASSWORD"))

    _serve_until_signalled(
        emulator,
        cert_out,
        lambda: [
            ("SMTP emulator", f"smtp://{host}:{emulator.port} (TLS: {tls})"),
            _control(host, emulator),
        ],
    )


@app.command("ses")
def ses(
    port: Annotated[int, typer.Option(help="HTTPS port (0 = any free port).")] = 8449,
    control_port: ControlPort = 8450,
    host: Host = "127.0.0.1",
    region: Annotated[str, typer.Option(help="The region requests must be signed for.")] = (
        "us-east-1"
    ),
    tls: PlainTls = True,
    key: Annotated[
        list[str] | None,
        typer.Option(help="Accept an access key: ACCESS_KEY_ID:SECRET (repeatable)."),
    ] = None,
    max_send_rate: Annotated[
        float | None, typer.Option(help="Messages per second before TooManyRequestsException.")
    ] = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
) -> None:
    """Emulate Amazon SES v2 SendEmail (SigV4 checks, body validation, throttling)."""
    from clarion.emulators.ses import SesEmulator

    with _starting("SES"):
        emulator = SesEmulator(
            host=host,
            port=port,
            control_port=control_port,
            region=region,
            tls=tls,
            max_send_rate=max_send_rate,
            cert_file=cert_file,
            key_file=key_file,
        )
        for spec in key or []:
            emulator.add_key(*_split_pair(spec, "--key", "ACCESS_KEY_ID:SECRET"))

    _serve_until_signalled(
        emulator,
        cert_out,
        lambda: [
            ("SES emulator", f"{emulator.endpoint}/v2/email/outbound-emails (region {region})"),
            _control(host, emulator),
        ],
    )


@app.command("sendgrid")
def sendgrid(
    port: Annotated[int, typer.Option(help="HTTPS port (0 = any free port).")] = 8451,
    control_port: ControlPort = 8452,
    host: Host = "127.0.0.1",
    tls: PlainTls = True,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Accept this API key (repeatable).")
    ] = None,
    rate_limit: Annotated[
        int | None, typer.Option(help="Requests per --rate-window seconds before 429.")
    ] = None,
    rate_window: Annotated[float, typer.Option(help="The rate limit's window, seconds.")] = 1.0,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    cert_out: CertOut = None,
) -> None:
    """Emulate SendGrid v3 Mail Send (bearer keys, body validation, 202, 429 rate limits)."""
    from clarion.emulators.sendgrid import SendGridEmulator

    with _starting("SendGrid"):
        emulator = SendGridEmulator(
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            rate_limit=rate_limit,
            rate_window=rate_window,
            cert_file=cert_file,
            key_file=key_file,
        )
        for value in api_key or []:
            emulator.add_key(value)

    _serve_until_signalled(
        emulator, cert_out, lambda: [("SendGrid emulator", emulator.url), _control(host, emulator)]
    )
