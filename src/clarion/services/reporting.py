"""What producers learn back about their events."""

from __future__ import annotations

from clarion.domain import errors
from clarion.services.ports import EventReport, RecipientReport, Store


class Reporting:
    """Reports on events and recipients."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def event(self, tenant_id: str, event_id: str) -> EventReport:
        """The event with its per-status and per-channel counts.

        Raises:
            errors.NotFound: no such event in this tenant.
        """
        report = await self._store.event_report(tenant_id, event_id)
        if report is None:
            raise errors.NotFound("no such event")
        return report

    async def recipient(self, tenant_id: str, event_id: str, user: str) -> RecipientReport:
        """One recipient's status, deliveries and audit trail for an event.

        Raises:
            errors.NotFound: no such event, or the user is not among its recipients.
        """
        report = await self._store.recipient_report(tenant_id, event_id, user)
        if report is None:
            raise errors.NotFound("no such recipient for this event")
        return report
