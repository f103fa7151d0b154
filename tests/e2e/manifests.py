"""Service and EndpointSlice manifests, written the way `kubectl get -o yaml` prints them.

Each Service goes into its own file together with its EndpointSlices, so a
test can rewrite one Service without touching the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from topology import BACKENDS, NODE_NAME

NAMESPACE = "e2e"

# -------------------------------------------------------------- YAML output
_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:@-]*$")
_SPECIAL = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _looks_typed(s: str) -> bool:
    """True when YAML would read the plain string as a number or a timestamp."""
    if re.fullmatch(r"\d{4}-\d\d-\d\d([Tt ].*)?", s):
        return True
    try:
        float(s.replace("_", ""))
        return True
    except ValueError:
        return bool(re.fullmatch(r"[-+]?(0x[0-9a-fA-F]+|0o?[0-7]+|[0-9:]+)", s))


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    s = str(value)
    if _PLAIN.match(s) and s.lower() not in _SPECIAL and not _looks_typed(s) \
            and not s.endswith(":"):
        return s
    return json.dumps(s)


def _emit(value, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key in sorted(value):
            v = value[key]
            if isinstance(v, dict) and v:
                out.append(f"{pad}{key}:")
                _emit(v, indent + 2, out)
            elif isinstance(v, list) and v:
                out.append(f"{pad}{key}:")
                _emit(v, indent, out)  # kubectl does not indent sequences
            else:
                out.append(f"{pad}{key}: {_inline(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                sub[0] = f"{pad}- {sub[0][indent + 2:]}"
                out.extend(sub)
            else:
                out.append(f"{pad}- {_inline(item)}")
    else:
        out.append(pad + _scalar(value))


def _inline(v) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return _scalar(v)


def to_yaml(*docs: dict) -> str:
    """Multi-document YAML, keys sorted as kubectl prints them."""
    parts = []
    for doc in docs:
        lines: list[str] = []
        _emit(doc, 0, lines)
        parts.append("\n".join(lines) + "\n")
    return "---\n".join(parts)


# ------------------------------------------------------------------ objects
@dataclass
class Port:
    name: str
    port: int
    target: int | str
    protocol: str = "TCP"
    node_port: int | None = None
    app_protocol: str | None = None


@dataclass
class Endpoint:
    ip: str
    pod: str
    ready: bool = True
    node: str = NODE_NAME


@dataclass
class ServiceDef:
    name: str
    cluster_ips: list[str]
    ports: list[Port]
    # One list of endpoints per EndpointSlice; the address type is inferred.
    slices: list[list[Endpoint]] = field(default_factory=list)
    type: str = "ClusterIP"
    external_ips: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE
    target_ports: dict[str, int] | None = None  # slice port numbers for named targetPorts
    # The switchyard.dev/datapath annotation. The suite tests the proxy
    # (retries, caps, drains, its metrics), which `auto` would skip for
    # table policies, so it pins the proxy unless a test says otherwise
    # (None: no annotation, dataplane.datapath decides).
    datapath: str | None = "proxy"

    def documents(self) -> list[dict]:
        return [service(self), *(endpoint_slice(self, i, eps) for i, eps in enumerate(self.slices))]

    def yaml(self) -> str:
        return to_yaml(*self.documents())


def _uid(*parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


def service(s: ServiceDef) -> dict:
    families = ["IPv6" if ":" in ip else "IPv4" for ip in s.cluster_ips]
    spec: dict = {
        "clusterIP": s.cluster_ips[0],
        "clusterIPs": list(s.cluster_ips),
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": families,
        "ipFamilyPolicy": "RequireDualStack" if len(families) > 1 else "SingleStack",
        "ports": [],
        "selector": {"app": s.name},
        "sessionAffinity": "None",
        "type": s.type,
    }
    for p in s.ports:
        port = {"name": p.name, "port": p.port, "protocol": p.protocol, "targetPort": p.target}
        if p.node_port is not None:
            port["nodePort"] = p.node_port
        if p.app_protocol is not None:
            port["appProtocol"] = p.app_protocol
        spec["ports"].append(port)
    if s.type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Cluster"
    if s.external_ips:
        spec["externalIPs"] = list(s.external_ips)
    meta: dict = {
        "creationTimestamp": "2024-06-11T09:00:00Z",
        "labels": {"app": s.name},
        "name": s.name,
        "namespace": s.namespace,
        "resourceVersion": "1001",
        "uid": _uid(s.namespace, s.name),
    }
    annotations = dict(s.annotations)
    if s.datapath is not None:
        annotations.setdefault("switchyard.dev/datapath", s.datapath)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec,
            "status": {"loadBalancer": {}}}


def endpoint_slice(s: ServiceDef, index: int, eps: list[Endpoint]) -> dict:
    v6 = any(":" in e.ip for e in eps) or (not eps and index == 1)
    address_type = "IPv6" if v6 else "IPv4"
    name = f"{s.name}-{'v6' if v6 else 'v4'}{index}"
    ports = []
    for p in s.ports:
        number = p.target if isinstance(p.target, int) else (s.target_ports or {})[p.name]
        ports.append({"name": p.name, "port": number, "protocol": p.protocol})
    return {
        "addressType": address_type,
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": [
            {
                "addresses": [e.ip],
                "conditions": {"ready": e.ready, "serving": e.ready, "terminating": False},
                "nodeName": e.node,
                "targetRef": {"kind": "Pod", "name": e.pod, "namespace": s.namespace,
                              "uid": _uid(s.namespace, e.pod)},
            }
            for e in eps
        ] or None,  # kubectl prints an empty slice as `endpoints: null`
        "kind": "EndpointSlice",
        "metadata": {
            "creationTimestamp": "2024-06-11T09:00:01Z",
            "generateName": f"{s.name}-",
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": s.name,
            },
            "name": name,
            "namespace": s.namespace,
            "resourceVersion": "1002",
            "uid": _uid(s.namespace, name),
        },
        "ports": ports if eps else None,
    }


# ------------------------------------------------------- the standard set
def backends(names: Iterable[str] | None = None, v6: bool = False) -> list[Endpoint]:
    wanted = set(names) if names is not None else None
    return [Endpoint(p.ipv6 if v6 else p.ipv4, p.name) for p in BACKENDS
            if wanted is None or p.name in wanted]


HTTP_PORT = 8080   # every backend's HTTP server
SHA_PORT = 9000    # bulk / half-close server on web-c
IPERF_PORT = 5201  # iperf3 on web-c
RESET_PORT = 9100  # reset server on web-b
NGINX_PORT = 8081  # nginx on web-a and web-b

WEB_VIP = "10.96.0.10"
NODEPORT_VIP, NODE_PORT = "10.96.0.11", 30080
EXTERNAL_VIP, EXTERNAL_IP = "10.96.0.12", "203.0.113.10"
DUAL_VIP4, DUAL_VIP6 = "10.96.0.13", "fd00:10:96::13"
IPERF_VIP = "10.96.0.20"
BULK_VIP = "10.96.0.21"
EMPTY_VIP = "10.96.0.30"
RESET_VIP = "10.96.0.50"
NGINX_VIP = "10.96.0.60"
DNS_VIP = "10.96.0.53"


def http_port() -> Port:
    return Port("http", 80, HTTP_PORT)


def standard_services() -> list[ServiceDef]:
    pod_a, pod_b, pod_c = (p.name for p in BACKENDS)
    return [
        ServiceDef("web", [WEB_VIP], [http_port()], [backends()]),
        ServiceDef("web-np", [NODEPORT_VIP], [Port("http", 80, HTTP_PORT, node_port=NODE_PORT)],
                   [backends()], type="NodePort"),
        ServiceDef("web-ext", [EXTERNAL_VIP], [http_port()], [backends()],
                   external_ips=[EXTERNAL_IP]),
        ServiceDef("web-dual", [DUAL_VIP4, DUAL_VIP6], [http_port()],
                   [backends(), backends(v6=True)]),
        ServiceDef("dns", [DNS_VIP],
                   [Port("dns", 53, 53, "UDP"), Port("dns-tcp", 53, 53, "TCP")],
                   [backends([pod_a])]),
        ServiceDef("iperf", [IPERF_VIP], [Port("iperf", IPERF_PORT, IPERF_PORT)],
                   [backends([pod_c])]),
        ServiceDef("bulk", [BULK_VIP], [Port("sha", SHA_PORT, SHA_PORT)], [backends([pod_c])]),
        ServiceDef("empty", [EMPTY_VIP], [http_port(), Port("dns", 53, 53, "UDP")], [[]]),
        ServiceDef("reset", [RESET_VIP], [Port("http", 80, RESET_PORT)], [backends([pod_b])]),
        # A named targetPort, resolved through the EndpointSlice's port name.
        ServiceDef("nginx", [NGINX_VIP], [Port("http", 80, "http-alt")],
                   [backends([pod_a, pod_b])], target_ports={"http": NGINX_PORT}),
    ]


def write_atomic(path: Path, text: str) -> None:
    """Replaces a file in one rename, from a temp file outside the watched directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent.parent, prefix=".manifest-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_services(directory: Path, services: Iterable[ServiceDef]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for s in services:
        write_atomic(directory / f"{s.name}.yaml", s.yaml())
