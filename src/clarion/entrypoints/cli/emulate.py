"""``clarion emulate ...``: local provider emulators for development, tests and benchmarks."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Run a local provider emulator (see docs/emulators.md).", no_args_is_help=True
)


@app.command("apns")
def apns(
    port: Annotated[int, typer.Option(help="HTTP/2 push port (0 = any free port).")] = 2197,
    control_port: Annotated[
        int, typer.Option(help="HTTP/1.1 JSON control API port (0 = any free port).")
    ] = 2198,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls/--h2c", help="TLS with ALPN h2, or cleartext HTTP/2 (prior knowledge)."
        ),
    ] = True,
    cert_file: Annotated[
        Path | None, typer.Option(help="PEM certificate to serve (default: a generated one).")
    ] = None,
    key_file: Annotated[Path | None, typer.Option(help="PEM private key for --cert-file.")] = None,
    cert_out: Annotated[
        Path | None, typer.Option(help="Write the served certificate here, for clients to trust.")
    ] = None,
    environment: Annotated[
        str, typer.Option(help="sandbox (answers carry apns-unique-id) or production.")
    ] = "sandbox",
    key: Annotated[
        list[str] | None,
        typer.Option(help="Register a signing key: TEAM_ID:KEY_ID:path/to/key.pem (repeatable)."),
    ] = None,
    latency_ms: Annotated[float, typer.Option(help="Delay before every answer.")] = 0.0,
) -> None:
    """Emulate the APNs provider API (token auth, header checks, stream limits, scripted faults)."""
    from clarion.emulators.apns import ApnsEmulator

    try:
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
    except (ValueError, OSError) as exc:
        typer.echo(f"cannot start the APNs emulator: {exc}", err=True)
        raise typer.Exit(2) from exc
    emulator.latency_ms = latency_ms

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await emulator.start()
        scheme = "https" if tls else "h2c"
        if cert_out is not None and emulator.certificate_pem is not None:
            cert_out.write_bytes(emulator.certificate_pem)
            typer.echo(f"certificate written to {cert_out}")
        typer.echo(f"APNs emulator: {scheme}://{host}:{emulator.port}/3/device/<token>")
        typer.echo(f"control API:   http://{host}:{emulator.control_port}/control/")
        try:
            await stop.wait()
        finally:
            await emulator.stop()

    asyncio.run(main())
