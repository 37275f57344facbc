"""Bus adapters, one module per technology, and `open_bus` to pick one.

Each fits `services.ports.Bus`: `memory` (in-process, the embedded default), `redis`
(Redis Streams, `redis_streams.py`) and `nats` (NATS JetStream, `nats_jetstream.py`). The
drivers are imported only when their backend is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clarion.adapters.bus.memory import MemoryBus
    from clarion.adapters.bus.nats_jetstream import NatsJetStreamBus
    from clarion.adapters.bus.redis_streams import RedisStreamsBus

KINDS = ("memory", "redis", "nats")


def open_bus(
    kind: str, url: str | None = None, **options: Any
) -> MemoryBus | RedisStreamsBus | NatsJetStreamBus:
    """The bus of `kind` (`memory`, `redis` or `nats`), connecting on first use.

    `url` is required for `redis` (``redis://[:password@]host:6379/0``, ``rediss://`` for TLS)
    and `nats` (``nats://[user:password@]host:4222``) and ignored for `memory`. `options` are
    the backend's keyword arguments; all three take `max_length`, `visibility_timeout`,
    `max_deliveries` and `dedupe_window`.
    """
    if kind == "memory":
        from clarion.adapters.bus.memory import MemoryBus

        return MemoryBus(**options)
    if kind not in KINDS:
        raise ValueError(f"unknown bus {kind!r}; expected one of {', '.join(KINDS)}")
    if not url:
        raise ValueError(f"the {kind} bus needs a URL")
    if kind == "redis":
        from clarion.adapters.bus.redis_streams import RedisStreamsBus

        return RedisStreamsBus(url, **options)
    from clarion.adapters.bus.nats_jetstream import NatsJetStreamBus

    return NatsJetStreamBus(url, **options)
