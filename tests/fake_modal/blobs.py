"""Content store plus a tiny loopback HTTP server standing in for S3 and Modal's block store.

Routes (all on 127.0.0.1):

- ``PUT /blob/<blob_id>`` / ``GET /blob/<blob_id>``: large payloads (``BlobCreate`` / ``BlobGet``).
  A PUT answers with the quoted md5 of the body as ``ETag``, which the client checks.
- ``PUT /block/<sha256 hex>``: a content-addressed block (mount files, ``VolumePutFiles2``).
- ``GET /file?path=<local path>&start=<offset>&len=<n>&trim=<0|1>``: one byte range (a volume
  block) of a local file (``VolumeGetFile2``). With ``trim=1`` its trailing zero bytes are left
  out, as Modal's block server does for a client that pads blocks back
  (``client_pads_blocks``). An RFC 9530 ``Repr-Digest: sha-256=:<base64>:`` header carries the
  digest of the body as sent, which is what the client checks (before padding).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SLOW_READ_S = 60.0


class ContentStore:
    """Thread-safe maps: blob id -> bytes, and sha256 hex -> bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        self._content: dict[str, bytes] = {}
        # local file path -> faults for its next block reads, in order: "503" (an error
        # reply), "corrupt" (a body that does not match its digest) or "slow" (an answer
        # only after SLOW_READ_S).
        self._faults: dict[str, list[str]] = {}
        self._served: dict[str, list[tuple[int, int]]] = {}  # local path -> (start, bytes sent)

    def put_blob(self, blob_id: str, data: bytes) -> None:
        with self._lock:
            self._blobs[blob_id] = data

    def get_blob(self, blob_id: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(blob_id)

    def put_content(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._content[digest] = data
        return digest

    def get_content(self, sha256_hex: str) -> bytes | None:
        with self._lock:
            return self._content.get(sha256_hex)

    def has_content(self, sha256_hex: str) -> bool:
        with self._lock:
            return sha256_hex in self._content

    def add_faults(self, local_path: str, kinds: tuple[str, ...]) -> None:
        with self._lock:
            self._faults.setdefault(local_path, []).extend(kinds)

    def next_fault(self, local_path: str) -> str | None:
        """The fault to inject into this read of ``local_path``, if any is still queued."""
        with self._lock:
            queued = self._faults.get(local_path)
            return queued.pop(0) if queued else None

    def record_served(self, local_path: str, start: int, sent: int) -> None:
        with self._lock:
            self._served.setdefault(local_path, []).append((start, sent))

    def served(self, local_path: str) -> list[tuple[int, int]]:
        """The block reads of ``local_path`` answered so far: (start offset, bytes sent)."""
        with self._lock:
            return list(self._served.get(local_path, []))

    def clear(self) -> None:
        with self._lock:
            self._blobs.clear()
            self._content.clear()
            self._faults.clear()
            self._served.clear()


class BlobServer:
    """Serves a ``ContentStore`` and local file ranges over HTTP on a random loopback port."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "BlobServer is not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        if self._httpd is not None:
            return
        handler = type("_BoundHandler", (_Handler,), {"store": self.store})
        self._httpd = _BlobHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-modal-blobs", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def blob_url(self, blob_id: str) -> str:
        return f"{self.base_url}/blob/{blob_id}"

    def block_put_url(self, sha256_hex: str) -> str:
        return f"{self.base_url}/block/{sha256_hex}"

    def file_range_url(self, path: Path, start: int, length: int, *, trim: bool) -> str:
        query = urllib.parse.urlencode(
            {"path": str(path), "start": start, "len": length, "trim": int(trim)}
        )
        return f"{self.base_url}/file?{query}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects; every reply sets Content-Length
    store: ContentStore

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_PUT(self) -> None:
        body = self._read_body()
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "blob":
            self.store.put_blob(parts[1], body)
            etag = f'"{hashlib.md5(body).hexdigest()}"'
            self._reply(200, b"", {"ETag": etag})
        elif len(parts) == 2 and parts[0] == "block":
            digest = self.store.put_content(body)
            if digest != parts[1]:
                self._reply(400, f"sha256 mismatch: got {digest}".encode())
            else:
                self._reply(200, f"stored {digest}".encode())
        else:
            self._reply(404, b"unknown route")

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "blob":
            data = self.store.get_blob(parts[1])
            if data is None:
                self._reply(404, b"no such blob")
            else:
                self._reply(200, data)
        elif parts == ["file"]:
            self._serve_file_range(urllib.parse.parse_qs(url.query))
        else:
            self._reply(404, b"unknown route")

    def _serve_file_range(self, query: dict[str, list[str]]) -> None:
        path = Path(query["path"][0])
        start, length = int(query["start"][0]), int(query["len"][0])
        try:
            with path.open("rb") as f:
                f.seek(start)
                data = f.read(length)
        except FileNotFoundError:
            self._reply(404, b"no such file")
            return
        if query.get("trim") == ["1"]:
            data = data.rstrip(b"\0")
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        fault = self.store.next_fault(str(path))
        if fault == "slow":  # a read that hangs well past any test's patience
            time.sleep(SLOW_READ_S)
        if fault == "503":
            self._reply(503, b"slow down")
            return
        if fault == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.store.record_served(str(path), start, len(data))
        self._reply(200, data, {"Repr-Digest": f"sha-256=:{digest}:"})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _BlobHTTPServer(ThreadingHTTPServer):
    # Clients open over a hundred block downloads at once (as against Modal's storage);
    # the stdlib's default backlog of 5 would drop connections and stall them on retries.
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-transfer (a pull stopped, a test ended) is normal for
        a block server: not printed into whatever test owns stderr at that moment."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]
