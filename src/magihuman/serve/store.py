"""The job store: a persistent queue of generation jobs in SQLAlchemy (SQLite WAL or PostgreSQL).

Life of a job (statuses as in the OpenAI Videos API)::

    queued --claim--> in_progress --complete--> completed
       |                  |  \\--fail--------> failed
       |                  |  \\--lease expired, attempts left--> queued (re-run)
       |                  |  \\--lease expired, none left------> failed (worker_lost)
       \\--cancel----------+-----------------> cancelled

Guarantees, and how:

* **No job is lost.** Every state lives in the database and every change is one committed statement;
  a server or worker killed at any point leaves each job queued, running under a lease that will expire,
  or finished.
* **One result per job.** A claim increments ``attempts``; that number is the run's fencing token.
  Heartbeats, progress, completion and failure are conditional updates on ``(id, status='in_progress',
  worker_id, attempts)``: a worker whose lease expired and whose job was re-queued or cancelled can no
  longer change it, and a completion records the run's own output file name, so a late writer never
  replaces a result.
* **Concurrent claims.** PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` in the claiming transaction.
  SQLite: the same query without row locks, then an update conditional on ``status='queued'``; a lost
  race (0 rows) just tries the next job. Each write is one statement, so SQLite's busy timeout is enough
  between processes.

Times are Unix seconds from the clock of the process that writes them (keep machines in NTP sync when
several share a PostgreSQL queue).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = [
    "JobStore", "Job", "QueueFull", "IdempotencyConflict", "STATUSES", "ACTIVE", "TERMINAL",
]

#: Every job status, in life order.
STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
#: Statuses that count against the queue limit.
ACTIVE = ("queued", "in_progress")
#: Statuses that never change again.
TERMINAL = ("completed", "failed", "cancelled")


class QueueFull(Exception):
    """The queue holds ``limit`` active jobs; ``retry_after`` is a suggested wait in whole seconds."""

    def __init__(self, limit: int, retry_after: int):
        super().__init__(f"the queue is full ({limit} jobs queued or running); retry in {retry_after} s")
        self.limit, self.retry_after = limit, retry_after


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` already used for a different request."""


class _Base(DeclarativeBase):
    pass


class _JobRow(_Base):
    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(48), unique=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str] = mapped_column(String(32))
    prompt: Mapped[str] = mapped_column(Text)
    params: Mapped[str] = mapped_column(Text)  # JSON: seconds, width, height, seed, input file names, ...
    progress: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    output: Mapped[str | None] = mapped_column(String(64), nullable=True)  # file name in the job folder
    notices: Mapped[str] = mapped_column(Text, default="[]")


class _StageRow(_Base):
    """Seconds per pipeline stage of each completed run (for ``/metrics``)."""

    __tablename__ = "job_stages"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(48))
    stage: Mapped[str] = mapped_column(String(64), index=True)
    seconds: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row (detached from the database).

    Attributes:
        id: ``video_`` + 32 random hex digits.
        status: one of :data:`STATUSES`.
        model: the preset.
        prompt: the prompt text.
        params: the other request fields (``seconds``, ``width``, ``height``, ``seed``, ``negative_prompt``,
            ``image``/``audio``: file names inside the job folder or None).
        progress: 0-100, from the denoising steps.
        created_at, started_at, completed_at: Unix seconds (None until reached).
        attempts: runs started so far (the fencing token of the current run).
        worker_id: the worker holding the job while ``in_progress``.
        error_code, error_message: why it failed or was cancelled.
        output: MP4 file name inside the job folder once completed.
        notices: messages from the input checks (rounding, short prompt).
    """

    id: str
    status: str
    model: str
    prompt: str
    params: dict[str, Any]
    progress: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    lease_expires_at: float | None
    error_code: str | None
    error_message: str | None
    output: str | None
    notices: list[str] = field(default_factory=list)
    fingerprint: str = ""


def _snapshot(row: _JobRow) -> Job:
    return Job(row.id, row.status, row.model, row.prompt, json.loads(row.params), row.progress, row.created_at,
               row.started_at, row.completed_at, row.attempts, row.max_attempts, row.worker_id, row.lease_expires_at,
               row.error_code, row.error_message, row.output, json.loads(row.notices or "[]"), row.fingerprint)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class JobStore:
    """The queue. Thread-safe; one instance per process (the API, each worker).

    Args:
        url: SQLAlchemy URL (``sqlite:///FILE`` or ``postgresql+psycopg://...``); tables are created if missing.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached or opened.
    """

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._create_lock = threading.Lock()
        try:
            _Base.metadata.create_all(self.engine)
        except IntegrityError:  # another process created the tables at the same moment (PostgreSQL)
            _Base.metadata.create_all(self.engine)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def ping(self) -> bool:
        """True when the database answers ``SELECT 1``."""
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar() == 1

    # ----------------------------------------------------------------------------------- create / read
    def create(self, *, job_id: str, model: str, prompt: str, params: dict[str, Any], notices: list[str],
               fingerprint: str, max_attempts: int, queue_limit: int, idempotency_key: str | None = None,
               now: float | None = None) -> tuple[Job, bool]:
        """Queue a job, or return the job an earlier request with the same ``idempotency_key`` created.

        Returns:
            ``(job, created)``; ``created`` is False for an idempotent replay.

        Raises:
            IdempotencyConflict: the key was used for a request with another ``fingerprint``.
            QueueFull: ``queue_limit`` jobs are already queued or running.
        """
        with self._create_lock:  # exact limit within one API process; across processes it may overshoot by few
            if idempotency_key is not None:
                existing = self._by_key(idempotency_key)
                if existing is not None:
                    return self._replay(existing, fingerprint), False
            active = self.count_active()
            if active >= queue_limit:
                raise QueueFull(queue_limit, self._retry_after(active))
            row = _JobRow(id=job_id, status="queued", model=model, prompt=prompt, params=json.dumps(params),
                          progress=0, created_at=time.time() if now is None else now, attempts=0,
                          max_attempts=max_attempts, deleted=False, idempotency_key=idempotency_key,
                          fingerprint=fingerprint, notices=json.dumps(notices))
            try:
                with self._sessions.begin() as session:
                    session.add(row)
            except IntegrityError:
                existing = self._by_key(idempotency_key) if idempotency_key else None
                if existing is None:
                    raise
                return self._replay(existing, fingerprint), False
            return _snapshot(row), True

    def _by_key(self, key: str) -> Job | None:
        with self._sessions() as session:
            row = session.scalars(select(_JobRow).where(_JobRow.idempotency_key == key)).first()
            return _snapshot(row) if row is not None else None

    @staticmethod
    def _replay(existing: Job, fingerprint: str) -> Job:
        if existing.fingerprint != fingerprint:
            raise IdempotencyConflict(
                f"this Idempotency-Key was already used for a different request (job {existing.id}); "
                "use a new key for a new request"
            )
        return existing

    def _retry_after(self, active: int) -> int:
        """Seconds until a slot is likely free: mean run time of recent jobs, at least 1, at most 600."""
        with self._sessions() as session:
            mean = session.execute(
                select(func.avg(_JobRow.completed_at - _JobRow.started_at))
                .where(_JobRow.status == "completed", _JobRow.started_at.is_not(None))
            ).scalar()
        return int(min(600, max(1, math.ceil(mean or 5.0))))

    def get(self, job_id: str, *, include_deleted: bool = False) -> Job | None:
        """The job, or None if unknown (or deleted, unless ``include_deleted``)."""
        with self._sessions() as session:
            query = select(_JobRow).where(_JobRow.id == job_id)
            if not include_deleted:
                query = query.where(_JobRow.deleted.is_(False))
            row = session.scalars(query).first()
            return _snapshot(row) if row is not None else None

    def list(self, *, after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[Job], bool]:
        """Jobs newest first (``order="asc"``: oldest first), after the job ``after``.

        Returns:
            ``(jobs, has_more)``.

        Raises:
            KeyError: ``after`` names no job.
        """
        with self._sessions() as session:
            query = select(_JobRow).where(_JobRow.deleted.is_(False))
            if after is not None:
                anchor = session.scalars(select(_JobRow.seq).where(_JobRow.id == after)).first()
                if anchor is None:
                    raise KeyError(after)
                query = query.where(_JobRow.seq < anchor if order == "desc" else _JobRow.seq > anchor)
            query = query.order_by(_JobRow.seq.desc() if order == "desc" else _JobRow.seq.asc()).limit(limit + 1)
            rows = session.scalars(query).all()
            return [_snapshot(r) for r in rows[:limit]], len(rows) > limit

    def count_active(self) -> int:
        """Jobs queued or running."""
        with self._sessions() as session:
            return session.execute(
                select(func.count()).select_from(_JobRow).where(_JobRow.status.in_(ACTIVE))
            ).scalar_one()

    def counts(self) -> dict[str, int]:
        """Number of jobs by status (deleted ones included: the counts only grow with work done)."""
        with self._sessions() as session:
            rows = session.execute(select(_JobRow.status, func.count()).group_by(_JobRow.status)).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    def stage_stats(self) -> dict[str, tuple[int, float]]:
        """``{stage: (runs, total seconds)}`` over every completed run."""
        with self._sessions() as session:
            rows = session.execute(
                select(_StageRow.stage, func.count(), func.sum(_StageRow.seconds)).group_by(_StageRow.stage)
            ).all()
        return {stage: (n, float(total or 0.0)) for stage, n, total in rows}

    # ----------------------------------------------------------------------------------- client actions
    def cancel(self, job_id: str, *, now: float | None = None) -> Job | None:
        """Cancel a queued or running job (a running one stops at its worker's next step).

        Returns:
            The job after the change (unchanged if it had already finished), or None if unknown.
        """
        now = time.time() if now is None else now
        with self._sessions.begin() as session:
            session.execute(
                update(_JobRow).where(_JobRow.id == job_id, _JobRow.status.in_(ACTIVE), _JobRow.deleted.is_(False))
                .values(status="cancelled", completed_at=now, error_code="cancelled",
                        error_message="cancelled by a client request", lease_expires_at=None)
            )
        return self.get(job_id)

    def delete(self, job_id: str) -> Job | None:
        """Cancel the job if active, then hide it from every read (the row stays as a tombstone, so a late
        worker cannot revive it and its idempotency key stays taken).

        Returns:
            The job as it was, or None if unknown or already deleted.
        """
        job = self.get(job_id)
        if job is None:
            return None
        self.cancel(job_id)
        with self._sessions.begin() as session:
            session.execute(update(_JobRow).where(_JobRow.id == job_id).values(deleted=True))
        return job

    # ----------------------------------------------------------------------------------- worker actions
    def claim(self, worker_id: str, models: Iterable[str], lease_seconds: float, *,
              now: float | None = None) -> Job | None:
        """Take the oldest queued job of one of ``models``: status ``in_progress``, ``attempts`` + 1, a lease.

        Returns:
            The claimed job, or None if nothing is queued for these models.
        """
        models = list(models)
        for _ in range(20):  # SQLite: another worker may win a race for the same row; try the next
            now_ = time.time() if now is None else now
            with self._sessions.begin() as session:
                query = (select(_JobRow.id).where(_JobRow.status == "queued", _JobRow.model.in_(models))
                         .order_by(_JobRow.seq).limit(1).with_for_update(skip_locked=True))
                job_id = session.scalars(query).first()
                if job_id is None:
                    return None
                won = session.execute(
                    update(_JobRow).where(_JobRow.id == job_id, _JobRow.status == "queued")
                    .values(status="in_progress", worker_id=worker_id, attempts=_JobRow.attempts + 1,
                            started_at=now_, lease_expires_at=now_ + lease_seconds, progress=0)
                ).rowcount
            if won:
                return self.get(job_id, include_deleted=True)
        return None

    def _owned(self, job: Job):
        return (_JobRow.id == job.id, _JobRow.status == "in_progress", _JobRow.worker_id == job.worker_id,
                _JobRow.attempts == job.attempts)

    def heartbeat(self, job: Job, lease_seconds: float, *, progress: int | None = None) -> bool:
        """Renew the lease of ``job`` (as claimed) and optionally record ``progress`` (0-100).

        Returns:
            False when the run no longer owns the job (cancelled, deleted, or re-queued after its lease
            expired): the worker must stop it.
        """
        values: dict[str, Any] = {"lease_expires_at": time.time() + lease_seconds}
        if progress is not None:
            values["progress"] = max(0, min(100, int(progress)))
        with self._sessions.begin() as session:
            return session.execute(update(_JobRow).where(*self._owned(job)).values(**values)).rowcount == 1

    def complete(self, job: Job, output: str, timings: dict[str, float]) -> bool:
        """Mark the run completed with its output file name and record its stage timings.

        Returns:
            False when the run no longer owns the job (then its output must be discarded).
        """
        with self._sessions.begin() as session:
            won = session.execute(
                update(_JobRow).where(*self._owned(job))
                .values(status="completed", progress=100, completed_at=time.time(), output=output,
                        lease_expires_at=None, error_code=None, error_message=None)
            ).rowcount == 1
            if won:
                session.add_all(_StageRow(job_id=job.id, stage=k, seconds=float(v)) for k, v in timings.items())
        return won

    def fail(self, job: Job, code: str, message: str) -> bool:
        """Mark the run failed with an error ``code`` and ``message``; False if it no longer owns the job."""
        with self._sessions.begin() as session:
            return session.execute(
                update(_JobRow).where(*self._owned(job))
                .values(status="failed", completed_at=time.time(), error_code=code, error_message=message[:2000],
                        lease_expires_at=None)
            ).rowcount == 1

    def release(self, job: Job) -> bool:
        """Give a job back to the queue without counting the run (a worker asked to stop); False if not owned."""
        with self._sessions.begin() as session:
            return session.execute(
                update(_JobRow).where(*self._owned(job))
                .values(status="queued", worker_id=None, lease_expires_at=None, progress=0,
                        attempts=_JobRow.attempts - 1)
            ).rowcount == 1

    def reap_expired(self, *, now: float | None = None) -> tuple[int, int]:
        """Jobs whose lease expired (their worker died or hung): re-queue those with attempts left, fail the rest
        with ``worker_lost``.

        Returns:
            ``(requeued, failed)`` counts.
        """
        now = time.time() if now is None else now
        expired = (_JobRow.status == "in_progress", _JobRow.lease_expires_at < now)
        with self._sessions.begin() as session:
            requeued = session.execute(
                update(_JobRow).where(*expired, _JobRow.attempts < _JobRow.max_attempts)
                .values(status="queued", worker_id=None, lease_expires_at=None, progress=0)
            ).rowcount
        with self._sessions.begin() as session:
            failed = session.execute(
                update(_JobRow).where(*expired, _JobRow.attempts >= _JobRow.max_attempts)
                .values(status="failed", completed_at=now, lease_expires_at=None, error_code="worker_lost",
                        error_message=("the worker running this job stopped responding (lease expired) on each of "
                                       "its attempts; the job was not retried again"))
            ).rowcount
        return requeued, failed

    def active_ids(self) -> list[str]:
        """Ids of the jobs queued or running (for tests and the supervisor's log)."""
        with self._sessions() as session:
            return list(session.scalars(select(_JobRow.id).where(_JobRow.status.in_(ACTIVE))))

