"""One dispatcher per database, whatever the number of gateway processes or hosts: a lease
row that the leader renews every round. Another process takes over once the lease has
expired (the leader died or hung), within one lease period.

Taking or renewing is one conditional UPDATE (held by me, or expired), or the INSERT of a
missing row; both databases serialise them (PostgreSQL row lock, SQLite's write lock), so
exactly one process holds the lease at a time.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from compute.models import Lease
from core.db import utcnow

DISPATCHER_LEASE = "dispatcher"


def holder_name() -> str:
    """Unique per process (and per start): host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def hold_lease(
    session: Session, holder: str, *, ttl_s: float, name: str = DISPATCHER_LEASE
) -> bool:
    """Take or renew the lease; True when `holder` holds it until now + ttl_s."""
    now = utcnow()
    expires = now + dt.timedelta(seconds=ttl_s)
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
        .values(holder=holder, expires_at=expires, renewed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken:
        return True
    if session.get(Lease, name) is not None:
        return False  # someone else holds it
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=expires, renewed_at=now))
    except IntegrityError:  # another process inserted it first
        return False
    return True


def release_lease(session: Session, holder: str, *, name: str = DISPATCHER_LEASE) -> None:
    """Give the lease up at once (a clean shutdown), so another process need not wait."""
    session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.holder == holder)
        .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
