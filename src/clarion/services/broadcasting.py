"""Broadcasting to provider topics: claim due topic sends, send, record what the provider said.

Routing writes one topic send per FCM topic that the groups and communities an event names are
mapped to (instead of one delivery per member's device). A topic send is one message to every
device the provider has subscribed to the topic: it has no recipient, so it honours no
per-user opt-out and moves no inbox item. Outcomes follow `delivering`: sent with the
provider's message name, retried with backoff (never sooner than a Retry-After) until
`retrying` gives up, failed on a definitive refusal. A credential the provider refuses is
paused as `pausing` does for deliveries, and the send waits with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import timedelta

from clarion.domain import outcomes, retrying
from clarion.domain.channels import Channel
from clarion.services.pausing import Pauser
from clarion.services.ports import (
    ClaimedTopicSend,
    Clock,
    TopicCompletion,
    TopicStore,
    TopicTransport,
)

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # longer than any provider call's timeout, so a live sender keeps its lease
IDLE_POLL_SECONDS = 0.5
DEFAULT_BATCH = 50  # one send per topic per event: batches stay small


class Broadcasting:
    """Runs the topic sends of every channel with a topic transport (today FCM)."""

    def __init__(
        self,
        store: TopicStore,
        clock: Clock,
        transports: Mapping[Channel, TopicTransport],
        *,
        credentials: Pauser | None = None,
        batch: int = DEFAULT_BATCH,
        rng: random.Random | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._store = store
        self._clock = clock
        self._transports = dict(transports)
        self._credentials = credentials
        self._batch = batch
        self._rng = rng or random.Random()

    async def broadcast_once(self, channel: Channel) -> int:
        """Claim and send one batch of `channel`'s topic sends; how many were attempted."""
        claimed = await self._store.claim_topic_sends(
            channel, limit=self._batch, lease_seconds=LEASE_SECONDS, now=self._clock.now()
        )
        if not claimed:
            return 0
        results = await self._transports[channel].send_topics(claimed)
        if len(results) != len(claimed):
            raise ValueError("a transport must answer once per topic send")
        await self._pause_refused(claimed, results)
        await self._store.complete_topic_sends(
            self._completions(claimed, results), self._clock.now()
        )
        return len(claimed)

    def _completions(
        self, claimed: Sequence[ClaimedTopicSend], results: Sequence[outcomes.Outcome]
    ) -> list[TopicCompletion]:
        done = []
        now = self._clock.now()
        for send, outcome in zip(claimed, results, strict=True):
            retry_at = None
            if isinstance(outcome, outcomes.RetryLater | outcomes.AuthFailed):
                hint = outcome.after_seconds if isinstance(outcome, outcomes.RetryLater) else None
                delay = retrying.retry_delay(
                    send.attempts, provider_hint=hint, jitter=self._rng.random()
                )
                if delay is None:
                    outcome = outcomes.Rejected(
                        f"gave up after {send.attempts} attempts: {outcome.reason}"
                    )
                else:
                    retry_at = now + timedelta(seconds=delay)
            done.append(TopicCompletion(send.id, send.fence, outcome, retry_at))
        return done

    async def _pause_refused(
        self, claimed: Sequence[ClaimedTopicSend], results: Sequence[outcomes.Outcome]
    ) -> None:
        if self._credentials is None:
            return
        refused: dict[tuple[str, str], str] = {}
        for send, outcome in zip(claimed, results, strict=True):
            if isinstance(outcome, outcomes.AuthFailed) and outcome.credential_id:
                refused.setdefault((send.tenant_id, outcome.credential_id), outcome.reason)
        for (tenant_id, credential_id), reason in refused.items():
            try:
                await self._credentials.pause(tenant_id, credential_id, reason)
            except Exception:
                # The sends are retried either way; the next refusal pauses it again.
                log.exception(
                    "could not pause a refused credential",
                    extra={"tenant": tenant_id, "credential": credential_id},
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Send on every channel with a topic transport until `stop` is set; a batch in flight
        finishes (its outcomes are recorded) before this returns."""
        async with asyncio.TaskGroup() as group:
            for channel in self._transports:
                group.create_task(self._run_channel(channel, stop))

    async def _run_channel(self, channel: Channel, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.broadcast_once(channel)
            except Exception:
                # Leases run out and the sends are claimed again: nothing is lost.
                log.exception("topic sends failed", extra={"channel": str(channel)})
                sent = 0
            if not sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), IDLE_POLL_SECONDS)
