"""A small CCDB REST server for tests, on 127.0.0.1 only, with faults to inject.

It follows the protocol of DESIGN §4 closely enough to test a client against it:

* ``POST /PATH/START/END/k=v/...`` with one multipart file part stores an object and
  answers 201 Created with a Location;
* ``GET /PATH/TIMESTAMP[/k=v...]`` answers 303 to ``/download/ID`` for the newest object
  valid at the timestamp (and matching the metadata), with ``Valid-From``,
  ``Valid-Until``, ``ETag``, ``Content-MD5`` and the metadata as headers; 404 otherwise;
* ``GET /browse/PATH`` and ``/latest/PATH`` with ``Accept: application/json`` answer
  ``{"objects": [...], "subfolders": [...]}``.

:class:`Faults` switches on the failures the client must survive or report.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit


@dataclass
class StoredObject:
    id: str
    path: str
    valid_from: int
    valid_until: int
    created: int
    data: bytes
    file_name: str
    content_type: str
    metadata: dict[str, str]

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    def as_json(self) -> dict:
        return {"id": self.id, "path": self.path, "validFrom": self.valid_from,
                "validUntil": self.valid_until, "createTime": self.created,
                "lastModified": self.created, "MD5": self.md5, "fileName": self.file_name,
                "contentType": self.content_type, "size": len(self.data), **self.metadata}


@dataclass
class Faults:
    """Counters are "the next N requests of that kind"; flags stay on until cleared."""

    post_500: int = 0  # answer 500, store nothing
    post_hang_after_store: int = 0  # store, then stall past the client's read time-out
    post_hang_before_store: int = 0  # read the body, stall, store nothing
    post_error: tuple[int, str] | None = None  # refuse every upload with (status, message)
    get_500: int = 0  # object retrieval answers 500
    redirect_loop: bool = False  # object retrieval redirects in a circle
    truncate: bool = False  # blobs stop after half their announced length
    corrupt: bool = False  # blobs have one byte flipped (length and headers intact)
    hang_seconds: float = 3.0


@dataclass
class CCDBServer:
    objects: list[StoredObject] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> CCDBServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.ccdb = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="ccdb-test-server",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()  # wake any stalled handler
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> CCDBServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- helpers for tests

    def count(self, method: str, prefix: str = "") -> int:
        return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))

    def find(self, path: str, timestamp: int, metadata: dict[str, str]) -> StoredObject | None:
        with self.lock:
            hits = [o for o in self.objects if o.path == path
                    and o.valid_from <= timestamp < o.valid_until
                    and all(o.metadata.get(k) == v for k, v in metadata.items())]
        return max(hits, key=lambda o: o.created) if hits else None

    def store(self, obj: StoredObject) -> None:
        with self.lock:
            # Strictly increasing creation times keep "newest" well defined within one ms.
            if self.objects:
                obj.created = max(obj.created, max(o.created for o in self.objects) + 1)
            self.objects.append(obj)


class _Handler(BaseHTTPRequestHandler):
    server_version = "ccdb-test/1"

    @property
    def ccdb(self) -> CCDBServer:
        return self.server.ccdb  # type: ignore[attr-defined]

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    # -- responses

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _text(self, status: int, message: str) -> None:
        self._reply(status, message.encode())

    # -- POST: create

    def do_POST(self) -> None:
        self.ccdb.requests.append(("POST", self.path))
        raw = [s for s in urlsplit(self.path).path.split("/") if s]
        digits = [i for i, s in enumerate(raw) if s.isdigit()]
        if not digits or digits[0] == 0 or digits[0] + 1 >= len(raw) \
                or not raw[digits[0] + 1].isdigit():
            self._drain()
            return self._text(400, "expected /PATH/START/END/[key=value/...]")
        i = digits[0]
        path = "/".join(raw[:i])
        start, end = int(raw[i]), int(raw[i + 1])
        meta = {}
        for seg in raw[i + 2:]:
            key, sep, value = seg.partition("=")
            if not sep:
                self._drain()
                return self._text(400, f"metadata segment {unquote(seg)!r} is not key=value")
            meta[unquote(key)] = unquote(value)
        body = self._drain()
        faults = self.ccdb.faults

        if faults.post_error is not None:
            return self._text(*faults.post_error)
        if start >= end:
            return self._text(400, "end of validity must follow the start")
        parts = self._file_parts(body)
        if parts is None:
            return self._text(400, "expected multipart/form-data with exactly one file part")
        file_name, content_type, data = parts
        if faults.post_500 > 0:
            faults.post_500 -= 1
            return self._text(500, "internal error (injected)")
        if faults.post_hang_before_store > 0:
            faults.post_hang_before_store -= 1
            return self._stall()

        obj = StoredObject(id=str(uuid.uuid4()), path=path, valid_from=start, valid_until=end,
                           created=int(time.time() * 1000), data=data, file_name=file_name,
                           content_type=content_type, metadata=meta)
        self.ccdb.store(obj)
        if faults.post_hang_after_store > 0:
            faults.post_hang_after_store -= 1
            return self._stall()
        location = f"{self.ccdb.url}/{path}/{start}/{obj.id}"
        self._reply(201, b"", {"Location": location})

    def _drain(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _file_parts(self, body: bytes) -> tuple[str, str, bytes] | None:
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return None
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        parts = list(msg.iter_parts())
        if len(parts) != 1 or not parts[0].get_filename():
            return None
        part = parts[0]
        return part.get_filename(), part.get_content_type(), part.get_payload(decode=True)

    def _stall(self) -> None:
        """Hold the answer back; the client times out first. Closes without answering."""
        self.ccdb.release.wait(self.ccdb.faults.hang_seconds)
        self.close_connection = True

    # -- GET: retrieve, browse, download

    def do_GET(self) -> None:
        self.ccdb.requests.append(("GET", self.path))
        raw = [s for s in urlsplit(self.path).path.split("/") if s]
        if raw and raw[0] in ("browse", "latest"):
            return self._browse("/".join(unquote(s) for s in raw[1:]), latest=raw[0] == "latest")
        if raw and raw[0] == "download" and len(raw) == 2:
            return self._download(raw[1])
        if raw and raw[0] == "page":  # a web page, as a proxy or a wrong URL would give
            return self._reply(200, b"<html><body>Welcome</body></html>", content_type="text/html")
        if raw and raw[0] == "loop":
            nxt = "b" if raw[-1] == "a" else "a"
            return self._reply(302, b"", {"Location": f"/loop/{nxt}"})
        digits = [i for i, s in enumerate(raw) if s.isdigit()]
        if not digits or digits[0] == 0:
            return self._text(400, "expected /PATH/TIMESTAMP[/key=value...]")
        return self._retrieve(raw, digits[0])

    def _retrieve(self, raw: list[str], i: int) -> None:
        faults = self.ccdb.faults
        if faults.get_500 > 0:
            faults.get_500 -= 1
            return self._text(500, "internal error (injected)")
        if faults.redirect_loop:
            return self._reply(302, b"", {"Location": "/loop/a"})
        path, timestamp = "/".join(raw[:i]), int(raw[i])
        meta = {}
        for seg in raw[i + 1:]:
            key, sep, value = seg.partition("=")
            if sep:
                meta[unquote(key)] = unquote(value)
        obj = self.ccdb.find(path, timestamp, meta)
        if obj is None:
            return self._text(404, f"No matching object for {path} at {timestamp}")
        headers = {"Location": f"/download/{obj.id}", "Valid-From": str(obj.valid_from),
                   "Valid-Until": str(obj.valid_until), "Created": str(obj.created),
                   "ETag": f'"{obj.id}"', "Content-MD5": obj.md5,
                   "Content-Disposition": f'inline;filename="{obj.file_name}"'}
        headers.update({k: v if v.isascii() else quote(v) for k, v in obj.metadata.items()})
        self._reply(303, b"", headers)

    def _download(self, object_id: str) -> None:
        with self.ccdb.lock:
            obj = next((o for o in self.ccdb.objects if o.id == object_id), None)
        if obj is None:
            return self._text(404, f"no object {object_id}")
        faults = self.ccdb.faults
        data = obj.data
        if faults.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = {"Content-MD5": obj.md5, "ETag": f'"{obj.id}"'}
        if faults.truncate:
            self.send_response(200)
            self.send_header("Content-Type", obj.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._reply(200, data, headers, content_type=obj.content_type)

    def _browse(self, path: str, *, latest: bool) -> None:
        with self.ccdb.lock:
            objects = [o for o in self.ccdb.objects if o.path == path]
            below = {o.path for o in self.ccdb.objects
                     if path == "" or o.path.startswith(path + "/")}
        objects.sort(key=lambda o: o.created, reverse=True)
        if latest:
            objects = objects[:1]
        depth = len(path.split("/")) if path else 0
        subfolders = sorted({"/".join(p.split("/")[: depth + 1]) for p in below if p != path})
        if "application/json" not in self.headers.get("Accept", ""):
            text = "\n".join(f"{o.path} {o.id}" for o in objects) + "\nSubfolders:\n" \
                + "\n".join(subfolders)
            return self._text(200, text)
        payload = {"objects": [o.as_json() for o in objects], "subfolders": subfolders}
        self._reply(200, json.dumps(payload).encode(), content_type="application/json")
