"""Storage inputs never crash the trainer's S3 storage: property-based fuzzing of URIs (odd characters,
buckets and keys at and beyond the length limits) and of objects replaced while being downloaded, against a
real S3 endpoint (moto); surfaces in tests/support/fuzz_storage.py, longer runs: bench/fuzz.py."""
from __future__ import annotations

import pytest

from support.fuzz import explore
from support.fuzz_storage import SURFACES


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name.split(": ")[1])
def test_property(surface):
    assert explore(surface).tried == surface.examples


@pytest.mark.parametrize("uri", ["s3://kubetune-fuzz/", "s3://bucket with space/key"], ids=["empty-key", "space-in-bucket"])
def test_an_invalid_location_is_permanent_not_retried(uri):
    """Found by the fuzzing: botocore's parameter validation was retried as a transient error (and a trainer
    exiting on it would be restarted up to maxRestarts); a retry cannot make a bucket name valid."""
    from kubetune_api.contract import PermanentError
    from support.fuzz_storage import storage

    with pytest.raises(PermanentError, match="is not a valid S3 location") as e:
        storage().head(uri)
    assert e.value.reason == "InvalidSpec"
