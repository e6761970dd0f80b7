"""spec.runPolicy: restarts, deadlines and clean-up; it may change while the job runs."""
from __future__ import annotations

from pydantic import Field

from .common import ApiModel


class RunPolicy(ApiModel):
    """Restarts, deadlines and clean-up. May be changed while the job runs."""

    max_restarts: int = Field(default=3, ge=0, le=1000, description="Gang restarts after pod failures before the job fails with BackoffLimitExceeded.")
    backoff_seconds: int = Field(
        default=30, ge=0, le=86400,
        description="Wait before the first restart; doubles each restart (capped by the operator, 1h by default).",
    )
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=31_536_000, description="Fail the job with DeadlineExceeded after this long running.")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=31_536_000, description="Delete the finished FineTuneJob and its objects after this long."
    )
    termination_grace_seconds: int = Field(default=300, ge=10, le=86400, description="Pod grace period; on SIGTERM the trainer checkpoints within it.")

