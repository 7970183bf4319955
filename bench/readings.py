"""What the bench reads of its runs from the database: counts by status, waiting for them to
finish, and their times (created, first step started, finished), which time the platform's
side of every scenario."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bench.measure import BenchError, wait_until
from engine.models import Run, Step


class RunReadings:
    """Read-only queries on the runs of a platform whose `reads` makes read-only sessions."""

    reads: sessionmaker[Session]

    def run_counts(self, workflow: str) -> dict[str, int]:
        with self.reads() as session:
            rows = session.execute(
                select(Run.status, func.count())
                .where(Run.workflow == workflow)
                .group_by(Run.status)
            ).all()
        return {status: count for status, count in rows}

    def wait_runs(self, workflow: str, expected: int, timeout: float) -> dict[str, int]:
        """Wait until `expected` runs of a workflow finished; BenchError if any did not succeed."""

        def finished() -> dict[str, int] | None:
            counts = self.run_counts(workflow)
            done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            return counts if done >= expected else None

        counts = wait_until(finished, timeout, f"{expected} runs of {workflow}", 0.05)
        if counts.get("succeeded", 0) < expected:
            raise BenchError(f"runs of {workflow} did not all succeed: {counts}")
        return counts

    def run_status(self, run_id: str) -> str:
        with self.reads() as session:
            return session.execute(select(Run.status).where(Run.id == run_id)).scalar_one()

    def run_times(self, run_id: str) -> tuple[datetime, datetime | None]:
        with self.reads() as session:
            row = session.execute(
                select(Run.created_at, Run.finished_at).where(Run.id == run_id)
            ).one()
        return row.created_at, row.finished_at

    def last_finished(self, workflow: str) -> datetime:
        with self.reads() as session:
            return session.execute(
                select(func.max(Run.finished_at)).where(Run.workflow == workflow)
            ).scalar_one()

    def finished_span(self, workflow: str) -> tuple[datetime, datetime]:
        """The first and the last finished_at among a workflow's runs."""
        with self.reads() as session:
            first, last = session.execute(
                select(func.min(Run.finished_at), func.max(Run.finished_at)).where(
                    Run.workflow == workflow
                )
            ).one()
        return first, last

    def first_step_times(self, workflow: str) -> dict[str, tuple[float, float]]:
        """Per run whose first step started: its creation and that start, in epoch seconds."""
        with self.reads() as session:
            rows = session.execute(
                select(Run.id, Run.created_at, func.min(Step.started_at))
                .join(Step, Step.run_id == Run.id)
                .where(Run.workflow == workflow)
                .group_by(Run.id, Run.created_at)
            ).all()
        return {
            run_id: (created.timestamp(), started.timestamp())
            for run_id, created, started in rows
            if started
        }
