"""spec.storage: the S3-compatible endpoint and where credentials come from (never the spec)."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from .common import DNS_SUBDOMAIN_PATTERN, ENDPOINT_PATTERN, NAME_MAX, URI_MAX, ApiModel, cel_rule, model_rules

# scheme://user[:password]@host: credentials in the URL, which would land in the
# ConfigMap, the pods' spec and error messages.
ENDPOINT_USERINFO_PATTERN = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@"
ENDPOINT_USERINFO_MESSAGE = (
    "must not carry credentials (user:password@host): put them in the Secret named by storage.secretRef "
    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and give the endpoint as scheme://host[:port]"
)


class SecretRef(ApiModel):
    """A reference to a Secret in the job's namespace."""

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")


class StorageSpec(ApiModel):
    """S3-compatible storage settings. Credentials come only from a Secret or the pod's cloud identity."""

    model_config = model_rules(
        cel_rule(f"!has(self.endpoint) || !self.endpoint.matches('{ENDPOINT_USERINFO_PATTERN}')",
                 f"endpoint {ENDPOINT_USERINFO_MESSAGE}", ".endpoint"),
    )

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

    @field_validator("endpoint")
    @classmethod
    def _no_userinfo(cls, v: str | None) -> str | None:
        if v is not None and re.match(ENDPOINT_USERINFO_PATTERN, v):
            raise ValueError(ENDPOINT_USERINFO_MESSAGE)
        return v
