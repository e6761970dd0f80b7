"""The operator's API client (kubetune_operator.kube): how many requests it has in flight at once."""
from __future__ import annotations

import asyncio
from typing import Any

import kopf

from kubetune_operator import kube


def test_requests_in_flight_are_bounded_and_all_answered(monkeypatch):
    """Hundreds of job loops creating at once: never more than max_in_flight requests are open (Kopf's
    connection pool has no limit, so each extra concurrent request would be another connection)."""
    active, peak, seen = 0, 0, []

    async def fake(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        seen.append((method, path))
        return {"metadata": {"name": (kwargs.get("payload") or {}).get("metadata", {}).get("name", "x")}}

    monkeypatch.setattr(kube._kopf_api, "post", lambda path, **kw: fake("POST", path, **kw))
    monkeypatch.setattr(kube._kopf_api, "get", lambda path, **kw: fake("GET", path, **kw))
    monkeypatch.setattr(kube._kopf_api, "patch", lambda path, **kw: fake("PATCH", path, **kw))
    monkeypatch.setattr(kube._kopf_api, "delete", lambda path, **kw: fake("DELETE", path, **kw))

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
    assert len(seen) == 250 and sum(1 for m, _ in seen if m == "POST") == 100
