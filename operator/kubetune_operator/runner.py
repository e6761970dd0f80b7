"""Start the operator: logging, login, metrics, Kopf. Used by `kubetune operator` and the tests."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import kopf

from kubetune_operator.handlers import Reconciler, make_registry
from kubetune_operator.kube import capture_operator_pause
from kubetune_operator.settings import OperatorSettings

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the Kopf object if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if isinstance(k8s, dict):
            out["object"] = {k: k8s.get(k) for k in ("namespace", "name") if k8s.get(k)}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _QuietEventHandlers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.endswith("succeeded.") and msg.startswith("Handler '") and "_event'" in msg)


def configure_logging(fmt: str = "json", verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # No line shows a source file, thread or process: do not collect them for every record
    # (the logging HOWTO's "Optimization"; findCaller walks the stack at every call).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Kopf logs every watch-event handler call ("Handler 'x' succeeded."): thousands per minute.
    logging.getLogger("kopf.objects").addFilter(_QuietEventHandlers())


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the current kubeconfig context (exec plugins too)."""
    if os.path.exists(SERVICE_ACCOUNT_TOKEN) and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    try:
        return kopf.login_via_client(**kwargs)
    except ImportError:
        return kopf.login_with_kubeconfig(**kwargs)


def run_operator(
    settings: OperatorSettings,
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool | None = None,
    login: Callable[..., Any] | None = None,
    stop_flag: Any | None = None,
    ready_flag: Any | None = None,
    metrics_port: int | None = None,
    health_port: int | None = None,
    runtime: Reconciler | None = None,
) -> None:
    """Run the operator in this thread with its own event loop until ``stop_flag`` is set.

    ``namespaces`` (globs allowed) restricts the watch; none means cluster-wide.
    """
    namespaces = tuple(namespaces or settings.watch_namespaces)
    if clusterwide is None:
        clusterwide = not namespaces
    rt = runtime or Reconciler(settings, login=login or default_login)
    if rt.login_fn is None:
        rt.login_fn = login or default_login
    rt.namespaces = () if clusterwide else tuple(namespaces)
    registry = make_registry(rt)
    # The FineTuneJob loops pause with Kopf (peering): they need its operator-paused toggle.
    capture_operator_pause(lambda toggle: setattr(rt, "paused", toggle))
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        rt.metrics.serve(port)
    hport = settings.health_port if health_port is None else health_port
    liveness = f"http://0.0.0.0:{hport}/healthz" if hport else None
    priority = settings.peering_priority
    if priority is None and not settings.standalone:
        # Kopf pauses *all* peers that share a priority, and the replicas of a Deployment
        # are identical: each process draws its own, so exactly one (the highest) works.
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                clusterwide=clusterwide,
                namespaces=() if clusterwide else namespaces,
                standalone=settings.standalone,
                # Only a named peering is mandatory; the default one is auto-detected in the startup handler.
                peering_name=settings.peering_name if settings.peering_required and not settings.standalone else None,
                priority=None if settings.standalone else priority,
                liveness_endpoint=liveness,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        )
    finally:
        rt.metrics.close()


class OperatorThread:
    """The operator in a background thread with its own loop: start(), stop(). For tests and benches."""

    def __init__(self, settings: OperatorSettings, *, login: Callable[..., Any], namespaces: Sequence[str] = (), **kwargs: Any):
        self.reconciler = Reconciler(settings, login=login)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._kwargs = dict(kwargs, namespaces=namespaces, login=login)
        self._settings = settings
        self._thread = threading.Thread(target=self._main, name="kubetune-operator", daemon=True)

    def _main(self) -> None:
        try:
            run_operator(self._settings, stop_flag=self._stop, ready_flag=self._ready, runtime=self.reconciler, **self._kwargs)
        except BaseException as e:  # surfaced by start()/stop()
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the operator did not become ready")
        if self._error:
            raise RuntimeError("the operator failed to start") from self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the operator did not stop")
        if self._error:
            raise RuntimeError("the operator failed") from self._error

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# Young objects the cyclic GC lets pile up before it looks at them (Python's default is 700).
GC_GEN0_THRESHOLD = 20_000


def tune_gc(gen0: int = GC_GEN0_THRESHOLD) -> None:
    """Make the cyclic garbage collector cheap for a long-running operator process.

    What start-up loaded (modules, Kopf's registry, the pydantic models and their schemas)
    lives as long as the process, yet every full collection walked all of it again, and with
    the default threshold of 700 a burst of FineTuneJobs ran hundreds of collections: in
    bench/operator_scale.py's 500-job burst the collector took 0.6-0.7 s of the operator's
    CPU (gc.callbacks). ``gc.freeze`` moves what exists now out of every later collection
    (the Python docs' advice for long-running processes), and a higher first threshold makes
    the young-generation passes rarer: 0.11 s in the same burst. Reference counting still frees
    almost everything at once; only reference cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)


def main(args: Any) -> int:
    """`kubetune operator`: settings from the environment, overridden by flags."""
    import dataclasses

    try:
        settings = OperatorSettings.from_env()
    except ValueError as e:  # a setting, named in the message, with what to do
        raise SystemExit(f"kubetune operator: {e}") from None
    changes: dict[str, Any] = {}
    if args.peering:
        changes.update(peering_name=args.peering, peering_required=True, standalone=False)
    if args.standalone:
        changes["standalone"] = True
    if args.priority is not None:
        changes["peering_priority"] = args.priority
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port
    if args.health_port is not None:
        changes["health_port"] = args.health_port
    settings = dataclasses.replace(settings, **changes)
    configure_logging(settings.log_format, verbose=args.verbose)
    if args.all_namespaces and args.namespace:
        raise SystemExit("kubetune operator: use either --namespace or --all-namespaces")
    namespaces = () if args.all_namespaces else tuple(args.namespace) or settings.watch_namespaces
    logging.getLogger("kubetune.operator").info(
        f"starting: {'namespaces ' + ','.join(namespaces) if namespaces else 'cluster-wide'}, "
        f"{'standalone' if settings.standalone else 'peering ' + settings.peering_name}, "
        f"metrics :{settings.metrics_port or '-'}, health :{settings.health_port or '-'}"
    )
    tune_gc()
    run_operator(settings, namespaces=namespaces, clusterwide=not namespaces)
    return 0
