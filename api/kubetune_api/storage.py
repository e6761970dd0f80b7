"""spec.storage: the S3-compatible endpoint and where credentials come from (never the spec)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import DNS_SUBDOMAIN_PATTERN, ENDPOINT_PATTERN, NAME_MAX, URI_MAX, ApiModel


class SecretRef(ApiModel):
    """A reference to a Secret in the job's namespace."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")


class StorageSpec(ApiModel):
    """S3-compatible storage settings. Credentials come only from a Secret or the pod's cloud identity."""

    endpoint: str | None = Field(
        default=None,
        max_length=URI_MAX,
        pattern=ENDPOINT_PATTERN,
        description="S3 endpoint URL (http:// or https://) for MinIO, Ceph RGW, GCS etc. Unset: AWS S3.",
    )
    region: str | None = Field(default=None, min_length=1, max_length=64, description="Region, e.g. us-east-1.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(default="auto", description="Bucket addressing. MinIO usually needs 'path'.")
    secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN). "
            "Unset: the pod's cloud identity (IRSA, workload identity)."
        ),
    )
    hub_secret_ref: SecretRef | None = Field(default=None, description="Secret with HF_TOKEN for gated hf:// models and datasets.")

