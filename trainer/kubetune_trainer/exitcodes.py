"""Exit codes of the trainer: the contract with the operator (and `kubetune run`).

The operator reads a failed pod's exit code:
- ``OK`` (0): training and export finished.
- ``PERMANENT`` (3): a retry cannot fix it (invalid config, unreadable or
  malformed data, model not found, wrong bucket or credentials). The job fails
  at once with the reason the trainer printed last.
- ``PREEMPTED`` (75, EX_TEMPFAIL): the trainer was asked to stop (SIGTERM),
  committed a checkpoint and exited; restart/resume without counting a failure.
- anything else (1, 137 for kill -9 / OOM, 139, ...): transient; the operator
  restarts the gang, which resumes from the last committed checkpoint.
"""
OK = 0
PERMANENT = 3
PREEMPTED = 75


class PermanentError(Exception):
    """An error a retry cannot fix. The trainer exits with PERMANENT."""

    def __init__(self, message: str, reason: str = "InvalidSpec"):
        super().__init__(message)
        self.reason = reason
