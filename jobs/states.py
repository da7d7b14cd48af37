"""The one job state machine, and the errors a caller gets when a job cannot do what was asked."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# The one state machine. running -> queued is lease loss: the worker died and the sweeper hands the
# job back to the queue, where the next worker resumes it from its checkpoint. cancelling -> succeeded
# covers a job that finished in the same moment a cancel arrived.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.CANCELLING, JobState.QUEUED}
    ),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    """The job is not in a state from which the requested state can be reached (API: 409)."""

    def __init__(self, job_id: str, current: str, wanted: str, message: str | None = None) -> None:
        super().__init__(message or f"job {job_id} is {current}; cannot become {wanted}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


class JobNotFinished(InvalidTransition):
    """Delete asked of a job that is queued or running, or whose worker has not let go yet (API: 409)."""

    def __init__(self, job_id: str, current: str, leased: bool) -> None:
        why = (" and its worker is still finishing; retry in a few seconds" if leased
               else "; cancel it and wait for it to end before deleting it")
        super().__init__(job_id, current, "deleted", f"job {job_id} is {current}{why}")


class JobNotFound(KeyError):
    """No job with that id (API: 404)."""
