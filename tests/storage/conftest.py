"""A real S3 HTTP server for the storage tests: moto's ThreadedMotoServer with
IAM authentication switched on (so wrong credentials are really rejected),
plus a small fault-injecting HTTP proxy in front of it.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

BUCKET = "kubetune-test"
REGION = "us-east-1"


class FaultProxy:
    """Forwards HTTP to moto; answers 503 (or cuts a response body short) on chosen requests.

    ``fail_every = n`` injects a fault on every n-th forwarded request whose
    method is in ``methods`` (0 disables). Faults alternate between a 503
    SlowDown-style error and, for GETs with a body, a response cut off half way.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.fail_every = 0
        self.methods = {"GET", "PUT", "POST", "HEAD", "DELETE"}
        self.count = 0
        self.injected: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    self.send_error(501, "chunked request bodies not supported by the test proxy")
                    return
                body = self.rfile.read(length) if length else b""
                fault = None
                with proxy.lock:
                    proxy.requests.append((self.command, self.path))
                    if proxy.fail_every and self.command in proxy.methods:
                        proxy.count += 1
                        if proxy.count % proxy.fail_every == 0:
                            fault = "cut" if (self.command == "GET" and (proxy.count // proxy.fail_every) % 2 == 0) else "503"
                            proxy.injected[f"{self.command} {fault}"] = proxy.injected.get(f"{self.command} {fault}", 0) + 1
                if fault == "503":
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                               b'<Message>injected by test proxy</Message></Error>')
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"):
                        self.send_header(k, v)
                upstream_length = resp.getheader("Content-Length")
                self.send_header("Content-Length", upstream_length if self.command == "HEAD" and upstream_length else str(len(data)))
                if fault == "cut" and len(data) > 1:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # clients hanging up on a cut response
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, fail_every: int = 0) -> None:
        with self.lock:
            self.fail_every = fail_every
            self.count = 0
            self.injected = {}
            self.requests = []

    def stop(self) -> None:
        self.server.shutdown()


class S3Env:
    def __init__(self, endpoint: str, proxy: FaultProxy, key_id: str, secret: str):
        self.endpoint = endpoint
        self.proxy = proxy
        self.key_id = key_id
        self.secret = secret
        self.bucket = BUCKET

    def client(self, endpoint: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def env(self, **extra: str) -> dict:
        """Environment for a subprocess using the good credentials."""
        e = dict(os.environ)
        e.update(AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret, AWS_DEFAULT_REGION=REGION)
        e.pop("AWS_SESSION_TOKEN", None)
        e.pop("AWS_PROFILE", None)
        e.update(extra)
        return e


@pytest.fixture(scope="module")
def s3():
    """moto S3 on 127.0.0.1 with authentication on; an IAM user with s3:* on everything.

    Module-scoped on purpose: moto's authentication switch is process-global,
    so it is switched back off before other test folders run their own moto.
    """
    import boto3
    import moto.settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's backends are process-global: start from (and leave behind) an empty state.
    def reset():
        return urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)
    reset()
    saved = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="kubetune")
    iam.put_user_policy(UserName="kubetune", PolicyName="s3-all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="kubetune")["AccessKey"]
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from here on every request is authenticated
    proxy = FaultProxy(port)
    env = S3Env(endpoint, proxy, key["AccessKeyId"], key["SecretAccessKey"])
    env.client().create_bucket(Bucket=BUCKET)
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=env.key_id, AWS_SECRET_ACCESS_KEY=env.secret, AWS_DEFAULT_REGION=REGION)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
        reset()
        proxy.stop()
        server.stop()


@pytest.fixture
def faults(s3):
    """The fault proxy, reset before and after each test that uses it."""
    s3.proxy.reset()
    yield s3.proxy
    s3.proxy.reset()
