"""Accounts, transactions and entries. Amounts are signed integer micro-tokens."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime, utcnow

MICRO = 1_000_000  # units per token
FEE_SHARDS = 8  # platform fee accounts


class AccountKind(enum.StrEnum):
    WALLET = "wallet"  # one per user
    ESCROW = "escrow"  # one per job: its hold until settlement
    # One per (job, node): the node owner's earnings for that node's saved work on the job,
    # charged to the payer but not yet theirs: released to the owner's wallet once the work
    # is accepted, or voided back to the payer.
    PENDING = "pending"
    PLATFORM_FEE = "platform_fee"  # FEE_SHARDS of them, summed wherever fees are read
    ISSUANCE = "issuance"  # singleton; the only account that goes negative


class TransactionKind(enum.StrEnum):
    SIGNUP_GRANT = "signup_grant"
    ADMIN_GRANT = "admin_grant"
    HOLD = "hold"
    SETTLEMENT = "settlement"
    PENDING_CREDIT = "pending_credit"  # escrow → pending, as a checkpoint saves work
    RELEASE = "release"  # pending → owner's wallet and the platform's fee
    VOID = "void"  # pending → the payer's wallet: the work was not accepted
    # The platform's fees (issuance for what they lack) → a user's wallet: what the user
    # paid for a job whose result was found invalid and is recomputed (compute.audits).
    COMPENSATION = "compensation"


class EntryKind(enum.StrEnum):
    ISSUE = "issue"  # issuance side of a grant
    GRANT = "grant"  # wallet side of a grant
    HOLD = "hold"  # wallet → escrow at submit
    CHARGE = "charge"  # out of the escrow into a node's pending credit
    PENDING = "pending"  # into a node's pending credit
    RELEASE = "release"  # out of a node's pending credit, to its owner and the fee
    NODE_CREDIT = "node_credit"  # a node owner's earnings for a node's accepted work
    VOID = "void"  # a node's pending credit back to the payer (both sides)
    PLATFORM_FEE = "platform_fee"
    REFUND = "refund"  # the unused hold back to the wallet
    COMPENSATION = "compensation"  # the platform's, for work paid for and found invalid


class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('wallet', 'escrow', 'pending', 'platform_fee', 'issuance')",
            name="kind_known",
        ),
        # No overdraft, enforced by the database as well as by the conditional updates.
        CheckConstraint("kind = 'issuance' OR balance >= 0", name="no_overdraft"),
        Index(
            "uq_ledger_accounts_wallet",
            "user_id",
            unique=True,
            sqlite_where=text("kind = 'wallet'"),
            postgresql_where=text("kind = 'wallet'"),
        ),
        Index(
            "uq_ledger_accounts_escrow",
            "job_id",
            unique=True,
            sqlite_where=text("kind = 'escrow'"),
            postgresql_where=text("kind = 'escrow'"),
        ),
        # Held tokens are the balances of a user's open escrows: few, whatever the history.
        Index(
            "ix_ledger_accounts_open_escrows",
            "user_id",
            sqlite_where=text("kind = 'escrow' AND balance > 0"),
            postgresql_where=text("kind = 'escrow' AND balance > 0"),
        ),
        Index(
            "uq_ledger_accounts_pending",
            "job_id",
            "node_id",
            unique=True,
            sqlite_where=text("kind = 'pending'"),
            postgresql_where=text("kind = 'pending'"),
        ),
        # A node owner's pending earnings: the balances of their open pending accounts.
        Index(
            "ix_ledger_accounts_open_pending",
            "user_id",
            sqlite_where=text("kind = 'pending' AND balance > 0"),
            postgresql_where=text("kind = 'pending' AND balance > 0"),
        ),
        Index(
            "uq_ledger_accounts_singleton",
            "kind",
            "shard",
            unique=True,
            sqlite_where=text("kind IN ('platform_fee', 'issuance')"),
            postgresql_where=text("kind IN ('platform_fee', 'issuance')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # pending accounts
    # The fee account's shard (0 for every other kind): releases by different nodes post
    # their fees to different rows, so concurrent settlements do not queue on one.
    shard: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Kept equal to the sum of the account's entries (checked by the invariant), so a
    # debit can be one conditional UPDATE ... WHERE balance >= amount.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    # Wallets only, kept by every posting (checked by the invariant) so that a balance or
    # history read costs the same whatever the history: node credits into this wallet,
    # charges out of this user's escrows less what was voided back to them, and the entries
    # on this user's accounts.
    earned: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    spent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    history_entries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerTransaction(Base):
    __tablename__ = "ledger_transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    node_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memo: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="nonzero"),
        Index("ix_ledger_entries_account_id_id", "account_id", "id"),
        Index("ix_ledger_entries_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(
        ForeignKey("ledger_transactions.id", ondelete="RESTRICT"), index=True
    )
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    node_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The user whose wallet or escrow the entry is on (None for system accounts): a
    # user's history is one index range, newest first, however many jobs they ran.
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
