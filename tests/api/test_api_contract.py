"""contract.validation_messages: the one '<field path>: <message>' formatting of pydantic errors
that `kubetune validate`, the operator, `kubetune run` and the trainer print."""
from __future__ import annotations

import pytest
from api_manifests import base
from pydantic import ValidationError

from kubetune_api import contract
from kubetune_api import spec as api


def _messages(mutate, prefix: str = "") -> list[str]:
    doc = base()
    mutate(doc["spec"])
    with pytest.raises(ValidationError) as e:
        if prefix:
            api.FineTuneJobSpec.model_validate(doc["spec"], by_alias=True, by_name=False)
        else:
            api.load_job(doc)
    return contract.validation_messages(e.value, prefix)


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["training"].update(globalBatchSize=15),
     ["spec.training.globalBatchSize: (15) must be divisible by microBatchSize x world size (2 x 1 = 2); "
      "use a multiple of 2"]),
    (lambda s: s.pop("model"), ["spec.model: required field is missing"]),
    (lambda s: s.update(unknownField=1), ["spec.unknownField: unknown field"]),
    (lambda s: s["output"].update(checkpointEvery=[1]),
     ["spec.output.checkpointEvery: Input should be a valid integer",
      "spec.output.checkpointEvery: Input should be a valid string"]),
    (lambda s: s.update(env=[{"name": "1BAD"}]),
     ["spec.env[0].name: String should match pattern '^[-._a-zA-Z][-._a-zA-Z0-9]*$'"]),
    (lambda s: s["distributed"].update(offload="parameters"),
     ["spec.distributed.offload: 'parameters' needs distributed.zeroStage 3; set zeroStage: 3 or offload: optimizer"]),
    (lambda s: s.update(resources={"requests": {"nvidia.com/gpu": 1}}),
     ["spec.resources: set GPUs with distributed.gpusPerNode, not nvidia.com/gpu in resources"]),
], ids=["cross-field-path-joined", "missing", "unknown", "union-tags-dropped", "list-index", "section-relative-path",
        "message-without-path"])
def test_validation_messages(mutate, expected):
    assert _messages(mutate) == expected


def test_prefix_names_the_part_parsed_alone():
    assert _messages(lambda s: s["method"]["lora"].update(r=0), prefix="spec") == [
        "spec.method.lora.r: Input should be greater than or equal to 1"
    ]
