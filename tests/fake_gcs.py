"""A Google Cloud Storage stand-in for offline tests.

The buckets live in memory, and one local server speaks what the real clients speak:
- the JSON API, used by tensorstore's `gcs` driver (orbax's arrays) and by TensorFlow's gs://
  filesystem (which etils' epath, orbax's metadata and this project's path layer go through);
- the XML API's ranged reads, which TensorFlow uses for file contents.

tensorstore takes a plain http endpoint ($TENSORSTORE_GCS_HTTP_URL). TensorFlow's endpoint is
fixed (https://www.googleapis.com), so the server is also the HTTPS proxy TensorFlow's curl is
sent through: a CONNECT tunnel is answered with a certificate the test trusts
($CURL_CA_BUNDLE), and the requests inside it reach the same handler. `FakeGcs.env()` is what a
subprocess needs. Requests the fake does not know are answered 501 and kept in `unhandled`, so
a test can say which call it lacks instead of failing somewhere inside a client.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import socketserver
import ssl
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclasses.dataclass
class _Object:
    data: bytes
    generation: int
    updated: str


@dataclasses.dataclass
class _Upload:
    bucket: str
    name: str
    condition: int | None
    data: bytearray = dataclasses.field(default_factory=bytearray)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for Google's storage hosts: (certificate, key). An EC key: a
    TLS handshake per request (TensorFlow opens a connection for each) costs less."""
    cert, key = directory / "fake_gcs_cert.pem", directory / "fake_gcs_key.pem"
    hosts = "DNS:www.googleapis.com,DNS:storage.googleapis.com"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-keyout", str(key), "-out", str(cert),
         "-subj", "/CN=www.googleapis.com",
         "-addext", f"subjectAltName={hosts}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class FakeGcs:
    """Buckets in memory behind a local server; `start()` before use, `stop()` after."""

    def __init__(self, workdir: Path):
        self.objects: dict[tuple[str, str], _Object] = {}
        self.uploads: dict[str, _Upload] = {}
        self.unhandled: list[str] = []
        self.refused: dict[str, int] = {}  # bucket -> 401 or 403 for every request to it
        self.requests = 0  # answered so far: a job's traffic, for measuring it
        self.lock = threading.Lock()
        self._generation = 0
        self.cert, key = make_certificate(workdir)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(self.cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeGcs:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def env(self) -> dict[str, str]:
        """The environment that sends TensorFlow and tensorstore here, with a fixed token."""
        return {
            "https_proxy": self.url,
            "HTTPS_PROXY": self.url,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": str(self.cert),
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "STORAGE_EMULATOR_HOST": self.url,  # google-cloud-storage (orbax asks it)
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_ROOT": "127.0.0.1:9",  # refused at once: not on Google's cloud
            "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
        }

    # The store, for tests to fill and read directly.

    def put(self, uri: str, data: bytes) -> None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        with self.lock:
            self._store(bucket, name, data)

    def get(self, uri: str) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return self.objects[(bucket, name)].data

    def names(self, uri: str) -> list[str]:
        """Object names under `uri` (a bucket or a folder in it), relative to it."""
        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        with self.lock:
            keys = [n for b, n in self.objects if b == bucket and n.startswith(prefix)]
        return sorted(n[len(prefix) :] for n in keys)

    def _store(self, bucket: str, name: str, data: bytes) -> _Object:
        self._generation += 1
        obj = _Object(bytes(data), self._generation, _now())
        self.objects[(bucket, name)] = obj
        return obj

    def metadata(self, bucket: str, name: str, obj: _Object) -> dict:
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{obj.generation}",
            "bucket": bucket,
            "name": name,
            "size": str(len(obj.data)),
            "generation": str(obj.generation),
            "metageneration": "1",
            "contentType": "application/octet-stream",
            "timeCreated": obj.updated,
            "updated": obj.updated,
            "md5Hash": base64.b64encode(hashlib.md5(obj.data).digest()).decode(),
        }


def _bucket(parts: list[str]) -> str:
    """The bucket a request's path names: /upload/storage/v1/b/B, /storage/v1/b/B, or /B/..."""
    if parts[1:4] == ["upload", "storage", "v1"]:
        return parts[5] if len(parts) > 5 else ""
    if parts[1:4] == ["storage", "v1", "b"]:
        return parts[4] if len(parts) > 4 else ""
    return parts[1] if len(parts) > 1 else ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out apart: no 40 ms delayed-ACK wait
    server: ThreadingHTTPServer

    def log_message(self, *args) -> None:  # quiet: failures are kept in `unhandled`
        pass

    @property
    def fake(self) -> FakeGcs:
        return self.server.fake

    # The proxy: TensorFlow's https requests arrive as a CONNECT tunnel.

    def do_CONNECT(self) -> None:
        self.send_response(200, "Connection established")
        self.end_headers()
        self.connection = self.fake.tls.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = socketserver._SocketWriter(self.connection)
        self.close_connection = False  # the requests in the tunnel follow on this connection

    # Routing.

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        body = self._body()
        parts = url.path.split("/")
        with self.fake.lock:
            self.fake.requests += 1
            if status := self.fake.refused.get(_bucket(parts)):
                return self._reply(status, {"error": {"code": status, "message": "refused"}})
            if url.path.startswith("/upload/storage/v1/b/") and method in ("POST", "PUT"):
                return self._upload(method, parts[5], query, body)
            if url.path.startswith("/storage/v1/b/"):
                return self._json_api(method, url.path, query)
            if method in ("GET", "HEAD") and len(parts) > 2:  # XML API: /bucket/object
                return self._media(parts[1], urllib.parse.unquote("/".join(parts[2:])))
        self._unknown(method)

    def _unknown(self, method: str) -> None:
        self.fake.unhandled.append(f"{method} {self.headers.get('Host')} {self.path}")
        self._reply(501, {"error": {"code": 501, "message": "not in the fake"}})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload=None, headers: dict | None = None) -> None:
        data = b"" if payload is None else (
            payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        )  # fmt: skip
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if payload is not None and not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _missing(self, bucket: str, name: str) -> None:
        self._reply(404, {"error": {"code": 404, "message": f"No such object: {bucket}/{name}"}})

    def _precondition(self, obj, query: dict) -> int | None:
        """The status a failed `ifGeneration(Not)Match` gives, or None when it holds."""
        generation = obj.generation if obj else 0
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
            return 412
        if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
            return 304
        return None

    # The JSON API.

    def _json_api(self, method: str, raw: str, query: dict) -> None:
        rest = raw[len("/storage/v1/b/") :]
        bucket, _, rest = rest.partition("/")
        if not rest:
            if method == "GET":
                return self._reply(200, {"kind": "storage#bucket", "name": bucket,
                                         "location": "US", "storageClass": "STANDARD"})  # fmt: skip
            return self._unknown(method)
        if rest == "o" and method == "GET":
            return self._list(bucket, query)
        if not rest.startswith("o/"):
            return self._unknown(method)
        rest = rest[2:]
        for verb in ("rewriteTo", "copyTo"):
            if f"/{verb}/b/" in rest and method == "POST":
                source, _, target = rest.partition(f"/{verb}/b/")
                target_bucket, _, target_name = target.partition("/o/")
                return self._copy(bucket, urllib.parse.unquote(source), target_bucket,
                                  urllib.parse.unquote(target_name), verb, query)  # fmt: skip
        name = urllib.parse.unquote(rest)
        obj = self.fake.objects.get((bucket, name))
        if method in ("GET", "HEAD"):
            if obj is None:
                return self._missing(bucket, name)
            if status := self._precondition(obj, query):
                return self._reply(status, None if status == 304 else {"error": {"code": status}})
            if query.get("alt") == "media":
                return self._media(bucket, name)
            return self._reply(200, self.fake.metadata(bucket, name, obj))
        if method == "DELETE":
            if obj is None:
                return self._missing(bucket, name)
            if status := self._precondition(obj, query):
                return self._reply(status, {"error": {"code": status}})
            del self.fake.objects[(bucket, name)]
            return self._reply(204)
        self._unknown(method)

    def _media(self, bucket: str, name: str) -> None:
        obj = self.fake.objects.get((bucket, name))
        if obj is None:
            return self._missing(bucket, name)
        data, size = obj.data, len(obj.data)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{obj.generation}"',
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": "1",
            "x-goog-stored-content-length": str(size),
            "Accept-Ranges": "bytes",
        }
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes="):
            return self._reply(200, data, headers)
        first, _, last = spec[len("bytes=") :].partition("-")
        if not first:  # the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
        if start >= size:
            if size == 0:
                return self._reply(200, b"", headers)
            return self._reply(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._reply(206, data[start : end + 1], headers)

    def _list(self, bucket: str, query: dict) -> None:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        start, end = query.get("startOffset", ""), query.get("endOffset")
        after = query.get("pageToken", "")
        limit = int(query.get("maxResults", 1000))
        names = sorted(
            n for b, n in self.fake.objects
            if b == bucket and n.startswith(prefix) and n >= start and (end is None or n < end)
        )  # fmt: skip
        items, prefixes, token = [], [], None
        for name in names:
            if after and name <= after:
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                folder = name[: cut + len(delimiter)]
                if folder not in prefixes and not (after and folder <= after):
                    prefixes.append(folder)
            else:
                items.append(self.fake.metadata(bucket, name, self.fake.objects[(bucket, name)]))
            if len(items) + len(prefixes) >= limit:
                token = name if cut < 0 else name[: cut + len(delimiter)] + "\uffff"
                break
        payload: dict = {"kind": "storage#objects"}
        if items:
            payload["items"] = items
        if prefixes:
            payload["prefixes"] = prefixes
        if token:
            payload["nextPageToken"] = token
        self._reply(200, payload)

    def _copy(self, bucket, name, target_bucket, target_name, verb, query) -> None:
        obj = self.fake.objects.get((bucket, name))
        if obj is None:
            return self._missing(bucket, name)
        if status := self._precondition(self.fake.objects.get((target_bucket, target_name)), query):
            return self._reply(status, {"error": {"code": status}})
        new = self.fake._store(target_bucket, target_name, obj.data)
        resource = self.fake.metadata(target_bucket, target_name, new)
        if verb == "copyTo":
            return self._reply(200, resource)
        size = str(len(obj.data))
        self._reply(200, {"kind": "storage#rewriteResponse", "done": True, "resource": resource,
                          "totalBytesRewritten": size, "objectSize": size})  # fmt: skip

    # Uploads: media (one request), resumable (a session, then PUTs).

    def _upload(self, method: str, bucket: str, query: dict, body: bytes) -> None:
        kind = query.get("uploadType")
        if method == "POST" and kind == "media":
            return self._finish(bucket, query["name"], body, query)
        if method == "POST" and kind == "resumable":
            name = query.get("name") or json.loads(body or b"{}")["name"]
            condition = query.get("ifGenerationMatch")
            upload_id = f"u{len(self.fake.uploads) + 1}"
            self.fake.uploads[upload_id] = _Upload(bucket, name, condition)
            host = self.headers.get("Host", "www.googleapis.com")
            scheme = "http" if host.startswith("127.0.0.1") else "https"
            location = (f"{scheme}://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable"
                        f"&upload_id={upload_id}")  # fmt: skip
            return self._reply(200, {}, {"Location": location})
        if method == "PUT" and (upload := self.fake.uploads.get(query.get("upload_id", ""))):
            return self._resume(upload, query["upload_id"], body)
        self._unknown(method)

    def _resume(self, upload: _Upload, upload_id: str, body: bytes) -> None:
        span = self.headers.get("Content-Range", "bytes */*").removeprefix("bytes ")
        first, _, total = span.partition("/")
        if first != "*":
            start = int(first.partition("-")[0])
            del upload.data[start:]
            upload.data += body
        if total != "*" and len(upload.data) == int(total):
            del self.fake.uploads[upload_id]
            query = {} if upload.condition is None else {"ifGenerationMatch": upload.condition}
            return self._finish(upload.bucket, upload.name, bytes(upload.data), query)
        headers = {"Range": f"bytes=0-{len(upload.data) - 1}"} if upload.data else {}
        self._reply(308, b"", headers)

    def _finish(self, bucket: str, name: str, data: bytes, query: dict) -> None:
        if status := self._precondition(self.fake.objects.get((bucket, name)), query):
            return self._reply(412 if status == 304 else status, {"error": {"code": 412}})
        obj = self.fake._store(bucket, name, data)
        self._reply(200, self.fake.metadata(bucket, name, obj))
