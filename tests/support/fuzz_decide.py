"""The operator's observed state: ``phases.decide`` over generated FineTuneJobs
(status in any phase, attempt, restarts, conditions and timestamps, some of
them malformed), their batch Jobs and pods in any combination of phases,
conditions, exit codes and termination messages, at any time.

Properties: deciding never raises, and deciding twice on the same observation
gives the same decision (idempotence).
"""
from __future__ import annotations

import copy
import datetime as dt
import functools
from typing import Any

from hypothesis import strategies as st

from support.fuzz import Surface
from support.manifests import job_manifest

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
PHASES = ["Pending", "Queued", "Initializing", "Running", "Suspended", "Restarting", "Exporting", "Succeeded",
          "Failed", "Unknown"]
TIMES = st.one_of(
    st.datetimes(dt.datetime(2025, 12, 1), dt.datetime(2026, 2, 1), timezones=st.just(dt.UTC)).map(
        lambda t: t.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["", "yesterday", "2026-13-45T99:99:99Z", "2026-01-01T12:00:00"]),
)
EXIT_CODES = st.sampled_from([0, 1, 2, 3, 75, 126, 137, 139, 143, 255, -1, 2**31])
MESSAGES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["kubetune: error: InvalidDataset: train row 3: bad", "kubetune: error: : x",
                     "kubetune: error: ModelNotFound: hf://org/m\nkubetune: error: AccessDenied: s3://b"]),
)


@functools.cache
def _settings() -> Any:
    from kubetune_operator.settings import OperatorSettings

    return OperatorSettings(max_backoff_seconds=100)


def _condition(ctype: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(ctype), "status": st.sampled_from(["True", "False", "Unknown"])},
                                 optional={"reason": st.sampled_from(["BackoffLimitExceeded", "DeadlineExceeded",
                                                                      "PodFailurePolicy", "Evicted", "x"]),
                                           "message": MESSAGES, "lastTransitionTime": TIMES})


@functools.cache
def _runnable() -> dict[str, Any]:
    manifest = job_manifest("j", "ml")
    manifest["metadata"]["uid"] = "u-1"
    return manifest


@st.composite
def observations(draw: st.DrawFn) -> Any:
    from kubetune_operator import builders, observe
    from kubetune_operator.observe import Observation

    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["suspend"] = draw(st.booleans())
    if draw(st.booleans()):
        spec["runPolicy"] = {"maxRestarts": draw(st.integers(0, 3)), "backoffSeconds": draw(st.integers(0, 60)),
                             **({"activeDeadlineSeconds": draw(st.integers(1, 10**6))} if draw(st.booleans()) else {}),
                             **({"ttlSecondsAfterFinished": draw(st.integers(0, 10**6))} if draw(st.booleans()) else {})}
    if draw(st.booleans()):
        spec["queueName"] = "team-a"
    if draw(st.integers(0, 9)) == 0:
        spec["training"] = {"maxSteps": 10, "globalBatchSize": 10}  # not runnable: InvalidSpec
    ftj = job_manifest("j", "ml", **spec)
    ftj["metadata"].update(uid="u-1", generation=draw(st.integers(1, 3)))
    if draw(st.integers(0, 9)) == 0:
        ftj["metadata"]["deletionTimestamp"] = "2026-01-01T11:00:00Z"
    attempt = draw(st.integers(0, 3))
    if draw(st.integers(0, 5)):
        phase = draw(st.sampled_from(PHASES))
        ftj["status"] = draw(st.fixed_dictionaries({}, optional={
            "phase": st.just(phase), "reason": st.sampled_from(["x", "BackoffLimitExceeded", "InvalidSpec"]),
            "attempt": st.just(attempt), "restarts": st.integers(0, 5), "activeJob": st.just(f"j-a{attempt}"),
            "observedGeneration": st.integers(1, 3), "startTime": TIMES, "completionTime": TIMES,
            "conditions": st.lists(st.sampled_from(PHASES).flatmap(_condition), max_size=3),
            "progress": st.fixed_dictionaries({}, optional={"step": st.integers(0, 100), "totalSteps": st.integers(0, 100),
                                                           "phase": st.sampled_from(["Exporting", "Training", "x"]),
                                                           "updatedAt": TIMES}),
        }))
    jobs = []
    for job_attempt in draw(st.lists(st.integers(1, 3), max_size=2, unique=True)):
        job = builders.build_batch_job(_runnable(), _settings(), job_attempt)
        job["spec"]["suspend"] = draw(st.booleans())
        job["status"] = {"conditions": draw(st.lists(
            st.sampled_from(["Complete", "Failed", "Suspended", "FailureTarget", "SuccessCriteriaMet"]).flatmap(_condition),
            max_size=2))}
        if draw(st.integers(0, 5)) == 0:
            job["metadata"]["deletionTimestamp"] = "2026-01-01T11:00:00Z"
        jobs.append(observe.summarize(job))
    pods = []
    for index in range(draw(st.integers(0, 3))):
        pod_attempt = draw(st.integers(1, 3))
        state = draw(st.one_of(
            st.just({"running": {}}), st.just({}),
            st.fixed_dictionaries({"terminated": st.fixed_dictionaries(
                {"exitCode": EXIT_CODES}, optional={"reason": st.sampled_from(["Error", "OOMKilled", "Completed"]),
                                                   "message": MESSAGES})}),
            st.fixed_dictionaries({"waiting": st.fixed_dictionaries(
                {"reason": st.sampled_from(["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "CreateContainerConfigError",
                                            "InvalidImageName"]), "message": MESSAGES})}),
        ))
        pod = {
            "metadata": {"name": f"j-a{pod_attempt}-{index}-x",
                         "labels": {"kubetune.io/job": "j", "kubetune.io/attempt": str(pod_attempt)}},
            "status": {"phase": draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"])),
                       "conditions": draw(st.lists(st.sampled_from(["DisruptionTarget", "PodScheduled", "Ready"])
                                                   .flatmap(_condition), max_size=2)),
                       "containerStatuses": [{"name": "trainer", "state": state}]},
        }
        if draw(st.integers(0, 5)) == 0:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T11:00:00Z"
        pods.append(pod)
    now = NOW + dt.timedelta(seconds=draw(st.integers(-86400, 10 * 86400)))
    return Observation.of(ftj, jobs=jobs, pods=pods, now=now, settings=_settings())


def check_decide(observation: Any) -> None:
    from kubetune_operator import phases

    before = copy.deepcopy(observation.ftj)
    first = phases.decide(observation)
    second = phases.decide(observation)
    assert first == second, f"deciding twice differs:\n  {first}\n  {second}"
    assert observation.ftj == before, "decide changed what it observed"


SURFACES = [Surface("operator: phases.decide over generated observations", observations(), check_decide, examples=150)]
