"""Fetch throughput: concurrent ranged GETs vs one stream, same object, same run.

    .venv/bin/python bench/fetch_throughput.py [--size-mb 64] [--per-connection-mbps 25] [--concurrency N] [--part-mb M]

Starts moto's S3 server on 127.0.0.1, uploads one object, then downloads it
alternately with ``S3Storage.download_file(ranged=True)`` (ranged GETs, range
size and streams chosen from the object size by ``S3Storage.ranged_plan``
unless ``--part-mb`` / ``--concurrency`` fix them) and ``ranged=False`` (one
GET), each verified (sha256), ``--repeats`` times. Prints MB/s of both; the
last line is their ratio.

Real S3 limits each connection (tens of MB/s to ~100 MB/s per stream);
``--per-connection-mbps`` puts a throttling proxy in front of moto that
paces every connection to that rate, which is the situation ranged
downloads are for. Without it, the local moto server is the bottleneck and
the ratio says little about real S3: moto (5.2) answers every ranged GET by
copying the whole object and slicing it, so N ranges cost it N full copies
on the same 2 CPU cores.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("api", "trainer")]


def throttling_proxy(upstream_port: int, mbps: float) -> ThreadingHTTPServer:
    """Forward to moto; stream each response body at most ``mbps`` MB/s per connection."""
    rate = mbps * 1e6

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _handle(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command == "HEAD":
                return
            t0, sent, chunk = time.monotonic(), 0, 256 * 1024
            while sent < len(data):
                self.wfile.write(data[sent:sent + chunk])
                sent += min(chunk, len(data) - sent)
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--part-mb", type=int, default=None, help="range size (default: chosen from the object size)")
    ap.add_argument("--concurrency", type=int, default=None, help="streams (default: chosen from the object size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-connection-mbps", type=float, default=25.0, help="pace each connection (0: no proxy)")
    args = ap.parse_args()

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from kubetune_trainer.storage import MiB, S3Storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    proxy = None
    if args.per_connection_mbps > 0:
        proxy = throttling_proxy(port, args.per_connection_mbps)
        endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"

    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    data = os.urandom(args.size_mb * MiB)
    digest = hashlib.sha256(data).hexdigest()
    s3.put_object(Bucket="bench", Key="blob", Body=data, Metadata={"sha256": digest})
    del data

    st = S3Storage(endpoint=endpoint, region="us-east-1", addressing_style="path",
                   concurrency=args.concurrency, part_size=args.part_mb * MiB if args.part_mb else None)
    part_size, streams = st.ranged_plan(args.size_mb * MiB)
    uri = "s3://bench/blob"
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        st.download_file(uri, Path(tmp) / "warmup", ranged=True)  # connection pool, page cache
        for _ in range(args.repeats):
            for ranged in (True, False):
                dest = Path(tmp) / f"out-{ranged}"
                t0 = time.perf_counter()
                info = st.download_file(uri, dest, ranged=ranged)
                times[ranged].append(time.perf_counter() - t0)
                assert info.sha256 == digest
                dest.unlink()
    server.stop()
    if proxy:
        proxy.shutdown()

    mbps = {k: args.size_mb * MiB / 1e6 / statistics.median(v) for k, v in times.items()}
    where = f"throttled to {args.per_connection_mbps:g} MB/s per connection" if proxy else "unthrottled local moto"
    print(f"object {args.size_mb} MiB, {where}, median of {args.repeats}, sha256 verified")
    print(f"  single stream : {mbps[False]:8.1f} MB/s  ({', '.join(f'{t:.2f}s' for t in times[False])})")
    chosen = "fixed" if args.part_mb or args.concurrency else "chosen from the size"
    print(f"  ranged x{streams:<2}    : {mbps[True]:8.1f} MB/s  ({', '.join(f'{t:.2f}s' for t in times[True])}), "
          f"{part_size / MiB:g} MiB ranges ({chosen})")
    print(f"ratio ranged/single = {mbps[True] / mbps[False]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
