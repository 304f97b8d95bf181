"""Object-store faults between the chain and a local S3 server (moto), injected by a proxy.

:class:`FaultyS3` is an HTTP proxy in front of moto that answers some requests as a busy or
broken S3 does: ``503 SlowDown``, ``500 InternalError``, a connection closed before the request
reached the server, or one closed after it did (the write happened, its answer was lost); or,
once armed, ``403 AccessDenied`` to every write, as a bucket policy changed mid-run does.

Retries are not bonemet-dask's own, and it sets none: botocore retries throttling, 5xx answers
and dropped connections (its ``legacy`` mode: 5 attempts, exponential backoff), and s3fs retries
on top what still fails with ``SlowDown`` in its message or a timeout (``S3FileSystem.retries``,
5).  The one place to change them is the store's fsspec options, which every reader and writer
of the store (zarr, the catalog, the writer lock, the workers' tasks) is opened with:
``storage_options={"config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"}}}``,
or the same under ``s3`` in fsspec's config (``~/.config/fsspec/s3.json``, ``FSSPEC_S3``).
"""

import http.client
import http.server
import itertools
import socket
import threading
from urllib.parse import urlsplit

import fsspec.config
import pytest
import zarr
from typer.testing import CliRunner

from bonemet_dask.cli import app
from bonemet_dask.errors import StoreError
from bonemet_dask.io.store import completed_shards, open_zarr_store
from bonemet_dask.ops.run import run
from bonemet_dask.ops.verify import verify
from bonemet_dask.synth import SynthConfig, generate

# the chain from the published Recon-CT (tiny: no fibula to segment apart), as test_convert_s3
CONFIG = SynthConfig(mice=1, weeks=2, size="tiny", seed=0, components=("recon_ct",))
_ANSWERS = {  # fault -> (HTTP status, S3 error code, message), as AWS words them
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "denied": (403, "AccessDenied", "Access Denied"),
}
KINDS = ("slowdown", "internal", "drop", "drop-after")
"""The transient faults :class:`FaultyS3` injects, in turn."""
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "expect", "keep-alive"}


class FaultyS3:
    """An HTTP proxy to an S3 server that fails every ``every``-th request, or denies writes.

    Parameters
    ----------
    upstream : str
        The S3 endpoint (``http://127.0.0.1:PORT``).
    every : int
        Fail every ``every``-th request of each method (0: none), cycling through ``kinds``
        per method: writes and reads are both hit, whatever their mix.
    kinds : tuple of str
        ``"slowdown"``, ``"internal"``, ``"drop"`` (closed before forwarding) and
        ``"drop-after"`` (forwarded, then closed before the answer).
    deny_from : str, optional
        Once a ``PUT`` whose path contains this text arrives, answer every write (``PUT``,
        ``POST``, ``DELETE``) from then on with ``403 AccessDenied``.
    """

    def __init__(
        self, upstream: str, *, every: int = 0, kinds: tuple[str, ...] = KINDS,
        deny_from: str | None = None,
    ) -> None:  # fmt: skip
        self.upstream = urlsplit(upstream)
        self.every, self.deny_from, self.denying = every, deny_from, False
        self.requests: dict[str, int] = {}  # method -> count
        self.injected: dict[tuple[str, str], int] = {}  # (fault, method) -> count
        self._kinds = {m: itertools.cycle(kinds) for m in ("GET", "HEAD", "PUT", "POST", "DELETE")}
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client hung up: its retry
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def options(self) -> dict:
        """fsspec ``storage_options`` that reach moto through this proxy."""
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": self.endpoint}}  # fmt: skip

    def faults(self, kind: str | None = None, method: str | None = None) -> int:
        """How many faults of ``kind`` (any) were injected into ``method`` requests (any)."""
        return sum(n for (k, m), n in self.injected.items()
                   if kind in (None, k) and method in (None, m))  # fmt: skip

    def _fault(self, method: str, path: str) -> str | None:
        with self._lock:
            count = self.requests[method] = self.requests.get(method, 0) + 1
            if self.deny_from and method == "PUT" and self.deny_from in path:
                self.denying = True
            if self.denying and method in ("PUT", "POST", "DELETE"):
                kind = "denied"
            elif self.every and count % self.every == 0:
                kind = next(self._kinds[method])
            else:
                return None
            self.injected[kind, method] = self.injected.get((kind, method), 0) + 1
            return kind

    def _forward(self, method: str, path: str, headers, body: bytes):
        connection = http.client.HTTPConnection(
            self.upstream.hostname, self.upstream.port, timeout=60
        )
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            sent["Content-Length"] = str(len(body))
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def _handler(self) -> type:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

            def log_message(self, *args) -> None:
                pass

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def _answer(self, status, reason, headers, body: bytes) -> None:
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP | {"server", "date"}:
                        self.send_header(key, value)
                length = dict((k.lower(), v) for k, v in headers).get("content-length")
                head = self.command == "HEAD"
                self.send_header("Content-Length", length if head and length else str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._fault(self.command, self.path)
                if fault == "drop":
                    return self._drop()
                if fault in _ANSWERS:
                    status, code, message = _ANSWERS[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                           f"<Message>{message}</Message><RequestId>fault</RequestId>"
                           "</Error>").encode()  # fmt: skip
                    return self._answer(status, None, [("Content-Type", "application/xml")], xml)
                answer = proxy._forward(self.command, self.path, self.headers, body)
                if fault == "drop-after":
                    return self._drop()
                return self._answer(*answer)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    def __enter__(self) -> "FaultyS3":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source(tmp_path):
    generate(str(tmp_path / "src"), CONFIG)
    return tmp_path / "src"


def _bucket(name: str) -> None:
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)  # straight to moto (conftest)


def _no_false_completes(url: str) -> list[str]:
    """The groups of ``url`` marked complete; each is checked to hold every one of its shards."""
    root = zarr.open_group(open_zarr_store(url), mode="r", use_consolidated=False)
    complete = []
    for path, node in root.members(max_depth=None):
        if not isinstance(node, zarr.Group) or "slice_hash" not in node:
            continue
        if node.attrs.get("bonemet", {}).get("status") == "complete":
            shards = set(range(node["slice_hash"].cdata_shape[0]))
            assert completed_shards(node) == shards, f"{path} is marked complete, not whole"
            complete.append(path)
    return sorted(complete)


def test_the_retry_policy_is_set_in_the_store_options(s3_endpoint):
    """botocore's defaults ride out every other request failing with 503 SlowDown; with
    ``max_attempts=1`` in ``storage_options`` the first such answer fails the read."""
    _bucket("faults-options")
    url = "s3://faults-options/a.zarr"
    zarr.open_group(open_zarr_store(url), mode="w").attrs["written"] = True  # straight to moto
    with FaultyS3(s3_endpoint, every=2, kinds=("slowdown",)) as proxy:
        group = zarr.open_group(open_zarr_store(url, mode="r", storage_options=proxy.options()),
                                mode="r")  # fmt: skip
        assert group.attrs["written"] is True
        assert proxy.faults("slowdown") >= 1
        once = {**proxy.options(), "config_kwargs": {"retries": {"max_attempts": 1}}}
        with pytest.raises(OSError, match=r"Service Unavailable|SlowDown"):
            for _ in range(3):
                zarr.open_group(open_zarr_store(url, mode="r", storage_options=once), mode="r")


@pytest.mark.slow
def test_transient_faults_are_retried_and_the_store_verifies(
    s3_endpoint, source, tmp_path, monkeypatch, same_store
):
    """One request in 25 of each method fails (503 SlowDown, 500, connection dropped before or
    after the server saw it): ``run`` writes everything, ``bonemet-dask verify`` passes through
    the same faults, and the store equals a fault-free local run's."""
    _bucket("faults-transient")
    url = "s3://faults-transient/store.zarr"
    local = tmp_path / "local.zarr"
    assert run(source, str(local), start="recon_ct", until="segment").exit_code == 0
    with FaultyS3(s3_endpoint, every=25) as proxy:
        report = run(source, url, start="recon_ct", until="segment",
                     storage_options=proxy.options())  # fmt: skip
        assert report.exit_code == 0
        assert len(report.stages["convert"].written) == 2
        assert len(report.stages["segment"].written) == 4
        written_through = proxy.faults()
        monkeypatch.setitem(fsspec.config.conf, "s3", proxy.options())  # what the CLI reads
        checked = CliRunner().invoke(app, ["verify", str(source), url, "--components", "recon_ct"])
        assert checked.exit_code == 0, checked.output
        assert "OK:" in checked.output
    for kind in KINDS:  # on writes too (the run makes ~160 PUTs)
        assert proxy.faults(kind, "PUT") >= 1, proxy.injected
    assert proxy.faults() > written_through  # and on verify's reads
    monkeypatch.setitem(fsspec.config.conf, "s3", {"key": "testing", "secret": "testing",
                        "client_kwargs": {"endpoint_url": s3_endpoint}})  # fmt: skip
    same_store(local, url)
    assert len(_no_false_completes(url)) == 2 + 4


@pytest.mark.slow
def test_access_denied_mid_run_stops_naming_the_store(s3_endpoint, source, monkeypatch):
    """A bucket policy that starts denying writes while ``segment`` writes its first shard:
    ``bonemet-dask run`` stops (exit 2) with one message naming the store, what was refused
    and the fix; no group is marked complete that is not, and the converted scans verify."""
    _bucket("faults-denied")
    url = "s3://faults-denied/store.zarr"
    with FaultyS3(s3_endpoint, deny_from="/seg_ct/851/left/week0/0/c/") as proxy:
        monkeypatch.setitem(fsspec.config.conf, "s3", proxy.options())
        result = CliRunner().invoke(app, ["run", str(source), url, "--from", "recon_ct",
                                          "--until", "segment", "--cluster", "none"])  # fmt: skip
        assert proxy.faults("denied", "PUT") >= 1
    text = " ".join(result.output.split())  # rich wraps the red line
    assert result.exit_code == 2, result.output
    assert f"STORE {url!r} refused access" in text
    assert "seg_ct/851/left/week0" in text and "Access Denied" in text
    assert "credentials" in text and "rerun" in text
    monkeypatch.setitem(fsspec.config.conf, "s3", {"key": "testing", "secret": "testing",
                        "client_kwargs": {"endpoint_url": s3_endpoint}})  # fmt: skip
    complete = _no_false_completes(url)
    assert complete == ["recon_ct/851/both/week0", "recon_ct/851/both/week1"]
    assert verify(source, url, components="recon_ct").ok


def test_the_engine_turns_a_denied_write_into_a_store_error(s3_endpoint, source, tmp_path):
    """The API: the same denial raises :class:`StoreError` (a ``UsageError``) from ``run``."""
    _bucket("faults-denied-api")
    url = "s3://faults-denied-api/store.zarr"
    refused = r"segment: STORE 's3://faults-denied-api/store\.zarr' refused access at seg_ct/851/"
    with (
        FaultyS3(s3_endpoint, deny_from="/seg_ct/") as proxy,
        pytest.raises(StoreError, match=refused),
    ):
        run(source, url, start="recon_ct", until="segment", metrics_csv=None,
            storage_options=proxy.options())  # fmt: skip
