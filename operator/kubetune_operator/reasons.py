"""Phases, condition types and reasons the operator writes: the one list of them.

Reasons are CamelCase and stable (machine-readable, Kubernetes API conventions);
dashboards, alerts and tests match on them. The trainer's own permanent-error
reasons (``DatasetNotFound``, ``ModelNotFound``, ...) arrive through the error
line of the contract and are passed through as they are.
"""
from __future__ import annotations

# ------------------------------------------------------------------ phases
PENDING = "Pending"
QUEUED = "Queued"
INITIALIZING = "Initializing"
RUNNING = "Running"
SUSPENDED = "Suspended"
RESTARTING = "Restarting"
EXPORTING = "Exporting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"

# Every phase is also a condition type of the same name.
PHASES = (PENDING, QUEUED, INITIALIZING, RUNNING, SUSPENDED, RESTARTING, EXPORTING, SUCCEEDED, FAILED)
TERMINAL = (SUCCEEDED, FAILED)
ACTIVE = (INITIALIZING, RUNNING, EXPORTING)

# ---------------------------------------------------- other condition types
SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
# True while the next attempt cannot start: leftovers in the way, or the API server refuses it.
ATTEMPT_BLOCKED = "AttemptBlocked"

# ----------------------------------------------------------------- reasons
ACCEPTED = "Accepted"
WAITING_FOR_ADMISSION = "WaitingForAdmission"
PODS_STARTING = "PodsStarting"
PODS_RUNNING = "PodsRunning"
TRAINING_STARTED = "TrainingStarted"
RESUMING = "Resuming"
COMPLETED = "Completed"
CONTAINER_CREATING = "ContainerCreating"
# Phase-named reasons: the phase entered because the trainer or the user said so.
SUSPENDED_REASON = SUSPENDED
EXPORTING_REASON = EXPORTING

PREEMPTED = "Preempted"
OOM_KILLED = "OOMKilled"
EVICTED = "Evicted"
POD_FAILED = "PodFailed"
PERMANENT_ERROR = "PermanentError"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
INVALID_SPEC = "InvalidSpec"
IMAGE_PULL_FAILED = "ImagePullFailed"
UNSCHEDULABLE = "Unschedulable"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
SPEC_RESTORED = "SpecRestored"
JOB_DELETED = "JobDeleted"  # the attempt's Job vanished (deleted by hand): restart, not counted
WAITING_FOR_LEFTOVERS = "WaitingForLeftovers"  # a namesake's (or anyone's) Job or pods still in the way
WAITING_FOR_PREVIOUS_ATTEMPT = "WaitingForPreviousAttempt"  # pods of the last attempt still terminating
FORBIDDEN = "Forbidden"  # 403 on create: RBAC, quota, an admission webhook; retried with backoff
ATTEMPT_CREATED = "AttemptCreated"
# spec.model.from cannot be resolved (kubetune_operator.lineage): the job fails at once.
FROM_JOB_NOT_FOUND = "FromJobNotFound"
FROM_JOB_NOT_SUCCEEDED = "FromJobNotSucceeded"
FROM_JOB_UNUSABLE = "FromJobUnusable"
INVALID_OBJECT_SUFFIX = "Invalid"  # 422 on create: "<Kind>Invalid", e.g. JobInvalid


def invalid_object(kind: str) -> str:
    """The reason a job fails with when the API server refuses one of its objects as invalid."""
    return f"{kind}{INVALID_OBJECT_SUFFIX}"

# Reasons that are expected or not the user's fault get Normal events; the rest Warning.
NORMAL_REASONS = frozenset({
    ACCEPTED, WAITING_FOR_ADMISSION, PODS_STARTING, PODS_RUNNING, TRAINING_STARTED,
    EXPORTING_REASON, SUSPENDED_REASON, RESUMING, COMPLETED, CONTAINER_CREATING,
})
