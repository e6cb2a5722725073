"""Instance actions, their events, and faults: so the operator can always see why.

Each state change is written in the same transaction as the event that explains it.
"""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import InstanceAction, InstanceActionEvent, InstanceFault, utcnow


async def start_action(
    session: AsyncSession,
    instance_uuid: str,
    action: str,
    request_id: str,
    message: str | None = None,
) -> InstanceAction:
    row = InstanceAction(
        instance_uuid=instance_uuid,
        action=action,
        request_id=request_id,
        message=message,
        start_time=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row


async def finish_action(
    session: AsyncSession, action_id: int | None, message: str | None = None
) -> None:
    if action_id is None:
        return
    row = await session.get(InstanceAction, action_id)
    if row is not None:
        row.finish_time = utcnow()
        if message:
            row.message = message
        session.add(row)


async def start_event(
    session: AsyncSession, action_id: int | None, event: str, host: str | None = None
) -> InstanceActionEvent | None:
    if action_id is None:
        return None
    row = InstanceActionEvent(action_id=action_id, event=event, host=host, start_time=utcnow())
    session.add(row)
    await session.flush()
    return row


async def finish_event(
    session: AsyncSession, event_id: int | None, ok: bool, details: str | None = None
) -> None:
    if event_id is None:
        return
    row = await session.get(InstanceActionEvent, event_id)
    if row is not None:
        row.finish_time = utcnow()
        row.result = "success" if ok else "error"
        row.details = details
        session.add(row)


async def record_event(
    session: AsyncSession,
    action_id: int | None,
    event: str,
    ok: bool,
    host: str | None = None,
    details: str | None = None,
) -> None:
    """An event that started and finished in one step (scheduling, say)."""
    row = await start_event(session, action_id, event, host)
    if row is not None:
        await finish_event(session, row.id, ok, details)


def record_fault(
    session: AsyncSession,
    instance_uuid: str,
    message: str,
    host: str | None = None,
    details: str | None = None,
    code: int = 500,
) -> None:
    session.add(
        InstanceFault(
            instance_uuid=instance_uuid,
            code=code,
            message=message,
            details=details,
            host=host,
            created_at=utcnow(),
        )
    )
