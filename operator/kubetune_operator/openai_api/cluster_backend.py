"""The cluster backend: FineTuneJobs created and read with the caller's own Kubernetes identity.

The bearer token the ``openai`` client sends (its ``api_key``) is a Kubernetes
token. It is checked with a TokenReview (the server's one permission:
``tokenreviews create``, as in ``system:auth-delegator``), then every
FineTuneJob call is made *with that token*, so the cluster's RBAC decides what
the caller may do and the server holds no extra privilege: a caller who may not
create FineTuneJobs in a namespace gets the API server's 403, answered as the
OpenAI API's 403 (``PermissionDeniedError`` in the client).

The namespace is the caller's project (the ``OpenAI-Project`` header, the
client's ``project=``), else a service account's own namespace, else the
server's default. Uploaded files live in S3 under ``<prefix>/<namespace>/files/``;
file calls are allowed to callers that may create (write) or get (read)
FineTuneJobs in that namespace, asked of the cluster with a
SelfSubjectAccessReview made with the caller's token.

The server keeps no state: the job object is rebuilt from the FineTuneJob
(see mapping.py), events from its status and its Kubernetes Events.
"""
from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubetune_api import spec as api

from . import mapping
from .errors import ApiError, invalid, not_found
from .files import FileStore

log = logging.getLogger("kubetune.api.cluster")

USER_AGENT = "kubetune-api"
_SA_USER = re.compile(r"^system:serviceaccount:([a-z0-9-]+):[a-z0-9.-]+$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def kube_connection(kubeconfig: str | None = None) -> Any:
    """The API server's address, CA and the server's own credentials (in-cluster, else kubeconfig)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig:
            raise config.ConfigException("kubeconfig given")
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


def _status_message(e: Any) -> str:
    try:
        body = json.loads(e.body)
        return str(body.get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(e, "reason", e))


def _api_error(e: Any, what: str = "", ident: str = "") -> ApiError:
    """A Kubernetes ApiException as the OpenAI API's error (the status code carries over)."""
    status = int(getattr(e, "status", 500) or 500)
    message = _status_message(e)
    if status == 404 and what:
        return not_found(what, ident)
    if status == 401:
        return ApiError(401, f"the Kubernetes API server rejected the token: {message}", code="invalid_api_key")
    if status == 403:
        return ApiError(403, message, code="forbidden")
    if status in (400, 422):
        return invalid(f"the Kubernetes API server rejected the job: {message}", None, "invalid_job")
    if status == 409:
        return ApiError(409, message, code="conflict")
    return ApiError(502 if status >= 500 else status, f"Kubernetes API: {message}", code="kubernetes_error")


class ClusterBackend:
    def __init__(self, connection: Any, files: FileStore, *, output: str, catalogue: dict[str, str] | None = None,
                 template: dict[str, Any] | None = None, default_namespace: str | None = None, token_review: bool = True):
        self.connection = connection
        self.files = files
        self.output = output.rstrip("/")
        self.catalogue = catalogue or {}
        self.template = template or {}
        self.default_namespace = default_namespace
        self.token_review = token_review

    # ---------------------------------------------------------- identities
    def _client(self, token: str | None) -> Any:
        """An ApiClient acting as ``token`` (None: the server's own identity)."""
        from kubernetes import client

        cfg = copy.deepcopy(self.connection)
        if token is not None:
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
            cfg.refresh_api_key_hook = None
            cfg.cert_file = cfg.key_file = None
            cfg.username = cfg.password = None
        api_client = client.ApiClient(cfg)
        api_client.user_agent = USER_AGENT
        return api_client

    @contextmanager
    def _as(self, token: str) -> Iterator[Any]:
        api_client = self._client(token)
        try:
            yield api_client
        finally:
            api_client.close()

    def _review(self, token: str) -> str | None:
        """The username a TokenReview finds for ``token``; 401 when the cluster does not know it."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        api_client = self._client(None)
        try:
            review: Any = client.AuthenticationV1Api(api_client).create_token_review(body, _preload_content=False)
            result = json.loads(review.data)
        except ApiException as e:
            raise ApiError(503, f"cannot check the token (TokenReview): {_status_message(e)}", code="token_review_failed") from None
        finally:
            api_client.close()
        status = result.get("status") or {}
        if not status.get("authenticated"):
            raise ApiError(401, "the bearer token is not a valid Kubernetes token" + (f": {status['error']}" if status.get("error") else ""),
                           code="invalid_api_key")
        return (status.get("user") or {}).get("username")

    def _who(self, caller: Any) -> tuple[str, str]:
        """(token, namespace) of a request."""
        if not caller.token:
            raise ApiError(401, "a Kubernetes bearer token is required (the openai client's api_key)", code="invalid_api_key")
        user = self._review(caller.token) if self.token_review else None
        ns = caller.project
        if not ns and user:
            m = _SA_USER.match(user)
            ns = m.group(1) if m else None
        ns = ns or self.default_namespace
        if not ns:
            raise invalid("no namespace: name one as the project (OpenAI-Project header, the client's project=)", "project")
        if not _NAMESPACE.match(ns) or len(ns) > 63:
            raise invalid(f"project {ns!r} is not a valid namespace name", "project")
        return caller.token, ns

    def _may(self, token: str, ns: str, verb: str) -> None:
        """403 unless the caller may ``verb`` FineTuneJobs in ``ns`` (SelfSubjectAccessReview with their token)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "group": api.GROUP, "resource": api.PLURAL}}}
        with self._as(token) as c:
            try:
                raw: Any = client.AuthorizationV1Api(c).create_self_subject_access_review(body, _preload_content=False)
                review = json.loads(raw.data)
            except ApiException as e:
                raise _api_error(e) from None
        if not (review.get("status") or {}).get("allowed"):
            raise ApiError(403, f"you may not {verb} {api.PLURAL}.{api.GROUP} in the namespace {ns!r}, so not its files either",
                           code="forbidden")

    # ----------------------------------------------------------------- files
    def create_file(self, caller: Any, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        token, ns = self._who(caller)
        self._may(token, ns, "create")
        return self.files.create(ns, filename, purpose, data)

    def list_files(self, caller: Any, purpose: str | None) -> list[dict[str, Any]]:
        token, ns = self._who(caller)
        self._may(token, ns, "list")
        return self.files.list(ns, purpose)

    def get_file(self, caller: Any, file_id: str) -> dict[str, Any]:
        token, ns = self._who(caller)
        self._may(token, ns, "get")
        return self.files.get(ns, file_id)

    def file_content(self, caller: Any, file_id: str) -> bytes:
        token, ns = self._who(caller)
        self._may(token, ns, "get")
        return self.files.content(ns, file_id)

    def delete_file(self, caller: Any, file_id: str) -> dict[str, Any]:
        token, ns = self._who(caller)
        self._may(token, ns, "delete")
        return self.files.delete(ns, file_id)

    # ------------------------------------------------------------------ jobs
    def _objects(self, c: Any) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(c)

    def _get(self, c: Any, ns: str, job_id: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        if not job_id.startswith(mapping.JOB_PREFIX):
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        try:
            obj: dict[str, Any] = self._objects(c).get_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, job_id)
        except ApiException as e:
            raise _api_error(e, "fine-tuning job", job_id) from None
        return obj

    def _patch(self, c: Any, ns: str, job_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj: dict[str, Any] = self._objects(c).patch_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, job_id, patch)
        except ApiException as e:
            raise _api_error(e, "fine-tuning job", job_id) from None
        return obj

    def create_job(self, caller: Any, body: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        token, ns = self._who(caller)
        req = mapping.parse_create_request(body)
        self.files.get(ns, req.training_file, "training_file")
        if req.validation_file:
            self.files.get(ns, req.validation_file, "validation_file")
        source = mapping.resolve_model(req.model, self.catalogue)
        job_id = mapping.JOB_PREFIX + secrets.token_hex(12)
        manifest = mapping.build_manifest(
            req, name=job_id, namespace=ns, model_source=source,
            train_uri=self.files.uri(ns, req.training_file),
            eval_uri=self.files.uri(ns, req.validation_file) if req.validation_file else None,
            output_uri=f"{self.output}/{ns}/{job_id}", template=self.template,
        )
        mapping.check_manifest(manifest)
        with self._as(token) as c:
            try:
                created = self._objects(c).create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL, manifest)
            except ApiException as e:
                raise _api_error(e) from None
        return mapping.job_object(created, time.time())

    def list_jobs(self, caller: Any) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        token, ns = self._who(caller)
        with self._as(token) as c:
            try:
                items = self._objects(c).list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL,
                                                                        label_selector=f"{mapping.MANAGED_LABEL}=true")["items"]
            except ApiException as e:
                raise _api_error(e) from None
        now = time.time()
        jobs = [mapping.job_object(o, now) for o in items]
        return sorted(jobs, key=lambda j: (j["created_at"], j["id"]), reverse=True)

    def get_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        token, ns = self._who(caller)
        with self._as(token) as c:
            return mapping.job_object(self._get(c, ns, job_id), time.time())

    def cancel_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        token, ns = self._who(caller)
        with self._as(token) as c:
            obj = self._get(c, ns, job_id)
            state = mapping.status_of(obj)
            if state in mapping.FINAL:
                raise invalid(f"job {job_id} is already {state}; only unfinished jobs can be cancelled", "fine_tuning_job_id", "invalid_state")
            # Suspended, not deleted: the pods checkpoint and stop, the job and its history stay to be read.
            obj = self._patch(c, ns, job_id, {"metadata": {"annotations": {mapping.CANCELLED_ANNOTATION: mapping.format_time(time.time())}},
                                              "spec": {"suspend": True}})
        return mapping.job_object(obj, time.time())

    def pause_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        token, ns = self._who(caller)
        with self._as(token) as c:
            obj = self._get(c, ns, job_id)
            state = mapping.status_of(obj)
            if state not in ("validating_files", "queued", "running"):
                raise invalid(f"job {job_id} is {state}; only queued or running jobs can be paused", "fine_tuning_job_id", "invalid_state")
            obj = self._patch(c, ns, job_id, {"spec": {"suspend": True}})
        return mapping.job_object(obj, time.time())

    def resume_job(self, caller: Any, job_id: str) -> dict[str, Any]:
        token, ns = self._who(caller)
        with self._as(token) as c:
            obj = self._get(c, ns, job_id)
            state = mapping.status_of(obj)
            if state in mapping.FINAL or not (obj.get("spec") or {}).get("suspend"):
                raise invalid(f"job {job_id} is {state}; only paused jobs can be resumed", "fine_tuning_job_id", "invalid_state")
            obj = self._patch(c, ns, job_id, {"spec": {"suspend": False}})
        return mapping.job_object(obj, time.time())

    def list_events(self, caller: Any, job_id: str) -> list[dict[str, Any]]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        token, ns = self._who(caller)
        with self._as(token) as c:
            obj = self._get(c, ns, job_id)
            uid = (obj.get("metadata") or {}).get("uid")
            try:
                evs: Any = client.CoreV1Api(c).list_namespaced_event(ns, field_selector=f"involvedObject.name={job_id}", _preload_content=False)
                k8s_events = [e for e in json.loads(evs.data).get("items", [])
                              if (e.get("involvedObject") or {}).get("kind") == api.KIND and (e.get("involvedObject") or {}).get("uid") in (uid, None)]
            except ApiException as e:
                if e.status != 403:
                    raise _api_error(e) from None
                k8s_events = []  # may read the job but not Events: its status still tells the story
        return mapping.status_events(obj, k8s_events, time.time())

    def list_checkpoints(self, caller: Any, job_id: str) -> list[dict[str, Any]]:
        token, ns = self._who(caller)
        with self._as(token) as c:
            obj = self._get(c, ns, job_id)
        status = obj.get("status") or {}
        ckpt = status.get("lastCheckpoint") or {}
        if ckpt.get("step") is None:
            return []
        progress = status.get("progress") or {}
        metrics = {k: progress.get(k) for k in ("loss", "evalLoss")} if progress.get("step") == ckpt["step"] else {}
        created = mapping.parse_time(ckpt.get("time")) or int(time.time())
        return [mapping.checkpoint_object(job_id, int(ckpt["step"]), ckpt.get("uri") or "", created, metrics)]
