"""The operator's API client (kubetune_operator.kube): requests in flight, and credentials that stop working."""
from __future__ import annotations

import asyncio
from typing import Any

import kopf

from kubetune_operator import kube
from support.cluster import EmulatedCluster, wait_for
from support.manifests import job_manifest


def test_requests_in_flight_are_bounded_and_all_answered(monkeypatch):
    """Hundreds of job loops creating at once: never more than max_in_flight requests are open (Kopf's
    connection pool has no limit, so each extra concurrent request would be another connection)."""
    active, peak, seen = 0, 0, []

    async def fake(self: kube.Kube, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        seen.append(method.upper())
        return {"metadata": {"name": "x"}}

    monkeypatch.setattr(kube.Kube, "_request", fake)  # the one request of each call, below the bound

    async def main() -> None:
        client = kube.Kube(kopf.OperatorSettings(), max_in_flight=4)
        objs = [{"kind": "ConfigMap", "metadata": {"name": f"cm-{i}", "namespace": "ns"}} for i in range(100)]
        await asyncio.gather(
            *(client.create(o) for o in objs),
            *(client.get("Job", "ns", f"j-{i}") for i in range(50)),
            *(client.merge_patch("FineTuneJob", "ns", f"f-{i}", {"status": {}}, "status") for i in range(50)),
            *(client.delete("Job", "ns", f"j-{i}") for i in range(50)),
        )

    asyncio.run(main())
    assert peak == 4
    assert len(seen) == 250 and seen.count("POST") == 100


def test_no_answer_from_the_api_server_is_a_transient_api_error(monkeypatch):
    """A dropped connection or a timeout reaches the operator as kube.Unreachable, an APIError (status 0),
    which every caller retries as it retries a refused request; before, a create's dropped connection
    escaped as aiohttp's own error and stalled the job's loop for 30 s as "unexpected"."""
    import aiohttp
    import pytest

    async def failing(self: kube.Kube, method: str, path: str, **kwargs: Any) -> Any:
        if method == "post":
            raise aiohttp.ServerDisconnectedError()  # a dropped connection
        raise TimeoutError()  # no answer in time

    monkeypatch.setattr(kube.Kube, "_request", failing)

    async def main() -> None:
        client = kube.Kube(kopf.OperatorSettings())
        with pytest.raises(kube.APIError) as created:
            await client.create({"kind": "Service", "metadata": {"name": "s", "namespace": "ns"}})
        assert isinstance(created.value, kube.Unreachable) and created.value.status == 0
        assert "POST /api/v1/namespaces/ns/services" in str(created.value)
        with pytest.raises(kube.Unreachable):
            await client.get("Job", "ns", "j")

    asyncio.run(main())


def test_a_rotated_token_is_replaced_by_logging_in_again():
    """The operator's token stops working (rotated, expired: 401). Kopf's vault invalidates it and logs in
    again (the login handler reads the new token), and the refused request goes again with it: a job created
    after the rotation still gets its Job."""
    ns = "rotate"
    with EmulatedCluster() as cluster:
        cluster.ensure_namespace(ns)
        with cluster.operator(namespaces=(ns,)):
            cluster.create(job_manifest("before", ns))
            wait_for(lambda: cluster.get("Job", ns, "before-a1"), timeout=30, message="Job of the first job")
            old = cluster.operator_token
            assert old is not None
            identity = cluster.emulator.tokens[old]
            cluster.operator_token = cluster.emulator.issue_token(identity.user, identity.groups)
            del cluster.emulator.tokens[old]  # what the operator holds is refused from now on
            cluster.create(job_manifest("after", ns))
            wait_for(lambda: cluster.get("Job", ns, "after-a1"), timeout=30, message="Job of the job created after the rotation")
        refused = [c for c in cluster.operator_calls() if c.status == 401]
        assert refused, "the old token was never refused: the test did not rotate anything"
