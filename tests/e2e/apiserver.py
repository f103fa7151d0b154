"""A small emulation of the Kubernetes API server's list/watch protocol.

It serves Services, EndpointSlices and Nodes the way the real server does
for a client such as kube-rs: JSON lists carrying `metadata.resourceVersion`,
and `?watch=true&resourceVersion=N` streams of newline-delimited
`{"type": ..., "object": ...}` events (ADDED, MODIFIED, DELETED, BOOKMARK,
and ERROR with a 410 Status once the history the client asks for was
compacted). Tests change objects through methods, stop the server mid-watch
and start it again on the same address, and inject malformed objects.

The listening socket is created inside the node's network namespace (from
a helper thread that enters it), so the server runs in the test process
while only the node namespace can reach it: no traffic leaves the test's
namespaces. Plain HTTP; kube-rs accepts an http:// server in a kubeconfig.
"""

from __future__ import annotations

import base64
import bisect
import copy
import ctypes
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLONE_NEWNET = 0x40000000
BOOKMARK_INTERVAL = 1.0  # seconds between bookmarks on an idle watch
WATCH_POLL = 0.1

# path -> (kind, apiVersion, namespaced)
RESOURCES = {
    "/api/v1/services": ("Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/api/v1/nodes": ("Node", "v1"),
    "/api/v1/configmaps": ("ConfigMap", "v1"),
    "/apis/events.k8s.io/v1/events": ("Event", "events.k8s.io/v1"),
}
# /api/v1/namespaces/<ns>/<resource> (and /apis/<group>/<version>/...): the
# namespaced form of a path above, as Api::namespaced asks for it.
NAMESPACED_RE = re.compile(r"^(/apis?(?:/[^/]+)?/v1)/namespaces/([^/]+)/([^/]+)$")
# One namespaced object: .../namespaces/<ns>/<resource>/<name>.
OBJECT_RE = re.compile(r"^(/apis?(?:/[^/]+)?/v1)/namespaces/([^/]+)/([^/]+)/([^/]+)$")


EVENT_IMMUTABLE = ("note", "reason", "type", "action", "regarding", "related", "eventTime",
                   "reportingController", "reportingInstance")


def status(code: int, reason: str, message: str = "") -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message or reason}


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def socket_in_netns(ns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket bound inside network namespace `ns`."""
    result: dict = {}

    def enter_and_bind():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                # setns changes only this thread's namespace; the socket
                # stays in it after the thread ends.
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            result["sock"] = sock
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    t = threading.Thread(target=enter_and_bind, name=f"netns-{ns}")
    t.start()
    t.join(10)
    if "error" in result:
        raise result["error"]
    return result["sock"]


class Store:
    """Objects by kind plus an event history for watches."""

    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 1000
        self.objects: dict[str, dict[tuple[str, str], dict]] = {k: {} for k, _ in RESOURCES.values()}
        self.history: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.generation = 0  # bumped to end every open watch

    def _key(self, obj: dict) -> tuple[str, str]:
        meta = obj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    def put(self, obj: dict, raw: bool = False) -> int:
        """Creates or replaces an object; returns its new resourceVersion."""
        with self.lock:
            obj = copy.deepcopy(obj)
            kind = obj["kind"]
            self.rv += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            key = self._key(obj)
            kind_objects = self.objects[kind]
            event = "MODIFIED" if key in kind_objects else "ADDED"
            kind_objects[key] = obj
            self.history.append((self.rv, kind, event, obj))
            self.lock.notify_all()
            return self.rv

    def delete(self, kind: str, namespace: str, name: str, record: bool = True) -> None:
        with self.lock:
            obj = self.objects[kind].pop((namespace, name), None)
            if obj is None:
                return
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            if record:
                self.history.append((self.rv, kind, "DELETED", obj))
            self.lock.notify_all()

    def compact(self) -> None:
        """Forgets the history: a watch from an older resourceVersion gets 410."""
        with self.lock:
            self.compacted = self.rv
            self.history.clear()
            self.lock.notify_all()

    def list(self, kind: str, field_selector: str | None) -> tuple[list[dict], int]:
        with self.lock:
            items = [copy.deepcopy(o) for o in self.objects[kind].values()
                     if matches(o, field_selector)]
            return items, self.rv

    def list_page(self, kind: str, field_selector: str | None, start: int,
                  limit: int) -> tuple[list[dict], int, int]:
        """Items `start` to `start + limit` (all when `limit` is 0) in key
        order, the list's resourceVersion, and how many items there are."""
        with self.lock:
            keys = sorted(k for k, o in self.objects[kind].items()
                          if matches(o, field_selector))
            page = keys[start:start + limit] if limit > 0 else keys
            items = [copy.deepcopy(self.objects[kind][k]) for k in page]
            return items, self.rv, len(keys)

    def events_after(self, kind: str, rv: int, field_selector: str | None):
        with self.lock:
            # The history is in resourceVersion order: skip what the watch
            # has seen without scanning it (the scale benchmark holds 20,000
            # objects, and every wake-up of every watch would walk them).
            start = bisect.bisect_right(self.history, rv, key=lambda e: e[0])
            return [(r, t, copy.deepcopy(o)) for r, k, t, o in self.history[start:]
                    if k == kind and matches(o, field_selector)]


def matches(obj: dict, field_selector: str | None) -> bool:
    if not field_selector:
        return True
    meta = obj.get("metadata", {})
    for term in field_selector.split(","):
        field, _, value = term.partition("=")
        field = field.rstrip("=")
        actual = {"metadata.name": meta.get("name"),
                  "metadata.namespace": meta.get("namespace")}.get(field)
        if actual != value:
            return False
    return True


def status_410(rv: int) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"too old resource version: {rv}", "reason": "Expired", "code": 410}


class ApiServer:
    """The emulated server; `start()`/`stop()` may be called repeatedly."""

    def __init__(self, ns: str, host: str = "127.0.0.1", port: int = 6443,
                 log: Path | None = None):
        self.ns, self.host, self.port = ns, host, port
        self.store = Store()
        self.log_path = log
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._running = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig pointing at this server (JSON is valid YAML)."""
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url}}],
            "users": [{"name": "e2e", "user": {}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
        }
        path.write_text(json.dumps(cfg, indent=2))
        return path

    # ----------------------------------------------------------- lifecycle
    def start(self) -> "ApiServer":
        sock = socket_in_netns(self.ns, self.host, self.port)
        server = ThreadingHTTPServer((self.host, self.port), self._handler(),
                                     bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        self._server = server
        self._running.set()
        self._thread = threading.Thread(target=server.serve_forever,
                                         kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Closes the listener and every open connection (a crash, to clients)."""
        self._running.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._conns_lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns.clear()
        with self.store.lock:
            self.store.lock.notify_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _log(self, line: str) -> None:
        self.requests.append(line)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    # ------------------------------------------------------------- objects
    def put(self, *objects: dict) -> None:
        for obj in objects:
            self.store.put(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.store.delete(kind, namespace, name)

    def delete_quietly(self, kind: str, namespace: str, name: str) -> None:
        """Deletes without a DELETED event, as when it happened during an outage
        whose history was compacted: only a relist can notice."""
        self.store.delete(kind, namespace, name, record=False)

    def compact(self) -> None:
        self.store.compact()

    def events(self) -> list[dict]:
        """Every Event object (events.k8s.io/v1) written so far."""
        with self.store.lock:
            return [copy.deepcopy(o) for o in self.store.objects["Event"].values()]

    def watch_requests(self, kind_path: str) -> int:
        return sum(1 for r in self.requests if r.startswith(f"GET {kind_path}?")
                   and "watch=true" in r)

    # ------------------------------------------------------------- serving
    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with api._conns_lock:
                    api._conns.add(self.connection)

            def finish(self):
                with api._conns_lock:
                    api._conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, fmt, *args):
                pass

            def _object_path(self):
                """(kind, namespace, name) of a namespaced object path, or None."""
                m = OBJECT_RE.match(urllib.parse.urlsplit(self.path).path)
                if not m or f"{m[1]}/{m[3]}" not in RESOURCES:
                    return None
                return RESOURCES[f"{m[1]}/{m[3]}"][0], m[2], m[4]

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    return json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    return None

            def do_POST(self):
                api._log(f"POST {self.path}")
                m = NAMESPACED_RE.match(urllib.parse.urlsplit(self.path).path)
                obj = self._body()
                if not m or f"{m[1]}/{m[3]}" not in RESOURCES:
                    return self._json(404, status(404, "NotFound", f"no such path {self.path}"))
                if not isinstance(obj, dict) or not obj.get("metadata", {}).get("name"):
                    return self._json(400, status(400, "BadRequest", "expected an object with a name"))
                kind = RESOURCES[f"{m[1]}/{m[3]}"][0]
                obj["metadata"]["namespace"] = m[2]
                obj["kind"] = kind
                with api.store.lock:
                    if (m[2], obj["metadata"]["name"]) in api.store.objects[kind]:
                        return self._json(409, status(409, "AlreadyExists"))
                    api.store.put(obj)
                    created = copy.deepcopy(api.store.objects[kind][(m[2], obj["metadata"]["name"])])
                return self._json(201, created)

            def do_PATCH(self):
                api._log(f"PATCH {self.path}")
                target = self._object_path()
                patch = self._body()
                if target is None:
                    return self._json(404, status(404, "NotFound", f"no such path {self.path}"))
                if not isinstance(patch, dict):
                    return self._json(400, status(400, "BadRequest", "expected a merge patch"))
                kind, ns, name = target
                with api.store.lock:
                    current = api.store.objects[kind].get((ns, name))
                    if current is None:
                        return self._json(404, status(404, "NotFound"))
                    want_rv = patch.get("metadata", {}).get("resourceVersion")
                    if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                        return self._json(409, status(409, "Conflict", "the object has been modified"))
                    merged = merge_patch(current, patch)
                    # events.k8s.io/v1 update validation: only series (and
                    # metadata) may change.
                    changed = [f for f in EVENT_IMMUTABLE
                               if kind == "Event" and merged.get(f) != current.get(f)]
                    if changed:
                        return self._json(422, status(422, "Invalid",
                                                      f"field is immutable: {changed}"))
                    api.store.put(merged)
                    patched = copy.deepcopy(api.store.objects[kind][(ns, name)])
                return self._json(200, patched)

            def do_GET(self):
                api._log(f"GET {self.path}")
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                path = url.path
                target = self._object_path()
                if target is not None:
                    obj = api.store.objects[target[0]].get((target[1], target[2]))
                    if obj is None:
                        return self._json(404, status(404, "NotFound"))
                    return self._json(200, copy.deepcopy(obj))
                kind, single = None, None
                namespaced = NAMESPACED_RE.match(path)
                if namespaced and f"{namespaced[1]}/{namespaced[3]}" in RESOURCES:
                    kind, api_version = RESOURCES[f"{namespaced[1]}/{namespaced[3]}"]
                    ns_term = f"metadata.namespace={namespaced[2]}"
                    query["fieldSelector"] = ",".join(
                        t for t in (query.get("fieldSelector"), ns_term) if t)
                elif path in RESOURCES:
                    kind, api_version = RESOURCES[path]
                elif path.startswith("/api/v1/nodes/"):
                    kind, api_version = "Node", "v1"
                    single = path.rsplit("/", 1)[1]
                if kind is None:
                    return self._json(404, {"kind": "Status", "apiVersion": "v1", "code": 404,
                                            "status": "Failure", "reason": "NotFound",
                                            "message": f"no such path {path}"})
                if single is not None:
                    obj = api.store.objects["Node"].get(("", single))
                    if obj is None:
                        return self._json(404, {"kind": "Status", "apiVersion": "v1",
                                                "code": 404, "status": "Failure",
                                                "reason": "NotFound"})
                    return self._json(200, obj)
                selector = query.get("fieldSelector")
                if query.get("watch") in ("true", "1"):
                    return self._watch(kind, query, selector)
                limit = int(query.get("limit") or 0)
                start = int(query.get("continue") or 0)
                items, rv, total = api.store.list_page(kind, selector, start, limit)
                meta = {"resourceVersion": str(rv)}
                # Pages, as the real server serves them for `limit` (kube-rs
                # asks for 500): a client never holds the whole list at once.
                # The token is the offset into the list in key order; the
                # emulator re-lists for each page, which is consistent as
                # long as nothing changes mid-list (true where lists are long:
                # the scale benchmark).
                if limit > 0 and start + limit < total:
                    meta["continue"] = str(start + limit)
                    meta["remainingItemCount"] = total - start - limit
                return self._json(200, {"kind": f"{kind}List", "apiVersion": api_version,
                                        "metadata": meta, "items": items})

            def _json(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, event: dict) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self, kind: str, query: dict, selector: str | None):
                try:
                    rv = int(query.get("resourceVersion") or 0)
                except ValueError:
                    rv = 0
                timeout = min(float(query.get("timeoutSeconds") or 300), 300)
                bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                store = api.store
                deadline = time.monotonic() + timeout
                last_bookmark = time.monotonic()
                try:
                    while api._running.is_set() and time.monotonic() < deadline:
                        with store.lock:
                            gone = rv < store.compacted
                            events = [] if gone else store.events_after(kind, rv, selector)
                            current = store.rv
                            if not gone and not events:
                                store.lock.wait(WATCH_POLL)
                        if gone:
                            self._chunk({"type": "ERROR", "object": status_410(rv)})
                            break
                        for event_rv, event_type, obj in events:
                            self._chunk({"type": event_type, "object": obj})
                            rv = event_rv
                        if bookmarks and time.monotonic() - last_bookmark > BOOKMARK_INTERVAL:
                            rv = max(rv, current)
                            self._chunk({"type": "BOOKMARK", "object": {
                                "kind": kind, "apiVersion": RESOURCES_BY_KIND[kind],
                                "metadata": {"resourceVersion": str(rv)}}})
                            last_bookmark = time.monotonic()
                    if api._running.is_set():
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

        return Handler


RESOURCES_BY_KIND = {kind: version for kind, version in RESOURCES.values()}


def config_map(namespace: str, name: str, binary: dict[str, bytes]) -> dict:
    """A ConfigMap whose binaryData holds `binary` (base64, as the API sends it)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "uid": f"cm-{namespace}-{name}"},
            "binaryData": {k: base64.b64encode(v).decode() for k, v in binary.items()}}


def node_object(name: str, zone: str | None = None) -> dict:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels, "uid": f"node-{name}"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.244.1.1"}]}}
