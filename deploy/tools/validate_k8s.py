#!/usr/bin/env python3
"""Render ferry's kustomizations and validate every object.

kustomize itself is neither on PyPI nor in Debian, so this renders with a small subset of
it: `resources` (files and directories), `patches` given by `path` (strategic merge of
maps, matched by apiVersion/kind/name) and `images`. Any other key, or a patch that
contains a list, is refused, so the subset never silently renders something kustomize
would render differently; the one exception is a list of scalars in a patch of a custom
resource (cert-manager's), which replaces the list, as kustomize does for kinds it has no
schema for. Where `kubectl` is installed, its built-in kustomize renders the same
directories and the two results must be equal.

Then, for every rendered object:
  * its schema, strict (unknown fields are errors): the Kubernetes JSON schemas of
    kubernetes-validate for each version given with --kubernetes-version, and for
    cert-manager's Certificate and Issuer the JSON schemas vendored in tools/schemas/
    (derived from cert-manager's CRDs, see tools/schemas/README.md), checked with
    jsonschema, their metadata against that Kubernetes version's strict ObjectMeta;
  * what the schemas cannot see: Deployment selectors match their pod labels, Services
    select a pod and name its ports, ConfigMap/Secret references and keys exist (a Secret
    may be one a Certificate writes), probes name a container port, every container has
    requests and limits;
  * ferry's own wiring, for every ferry container (init containers too):
      - --config (or FERRY_CONFIG) is a key of a mounted ConfigMap and parses as TOML; every
        process reads the same configuration (the addresses to bind aside);
      - the stages bind IP addresses while the config names the decoder and writer
        Services the coordinator hands out; --coordinator (or FERRY_COORDINATOR) names the
        coordinator's gRPC Service;
      - mutual TLS: [grpc] names ca.crt, tls.crt and tls.key of one Secret mounted read-only,
        written by the Certificate of the container's own role; no `insecure = true`;
      - every Certificate but the CA carries its role's name as a DNS SAN (the role from its
        app.kubernetes.io/component label; the name ferry-<role>, or the role's names in
        [grpc.identities]) and no other role's, allows server and client auth, and is
        signed by an Issuer of this kustomization; each gRPC link
        (a stage to the coordinator, a reader to the decoder, the decoder to the writer)
        dials a name the server's certificate carries, and the NetworkPolicies admit it;
      - readers: a writable spool_dir, one replica per workload, no two serving the same
        --pipeline, a --pipeline the config plans; a reader in another pod (a sidecar) is an
        init container with restartPolicy Always and reads its own pod's Redis; the
        overlay `sidecar` has such a reader;
      - the coordinator's state_file is on a PersistentVolumeClaim (required with a watcher,
        which runs `run` in a Deployment of one replica).

Exit status 0 when everything is valid; 1 with one line per problem otherwise.
"""

import argparse
import copy
import ipaddress
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tomllib

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
# Custom resources validated against vendored schemas (kubernetes-validate has none).
CUSTOM_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager-v1.json",
    ("cert-manager.io/v1", "Issuer"): "issuer-cert-manager-v1.json",
}
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

ROLES = ("coordinator", "reader", "decoder", "writer", "watcher")
# The roles a certificate may name on the gRPC links (ferry_config::GRPC_ROLES): the
# processes', and admin for an operator's tools.
GRPC_ROLES = ROLES + ("admin",)
# [grpc] key -> the key of a cert-manager Secret it must be.
TLS_FILES = {"tls_ca_file": "ca.crt", "tls_cert_file": "tls.crt", "tls_key_file": "tls.key"}


class RenderError(Exception):
    pass


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            raise RenderError(f"{path}: not valid YAML: {e}") from e
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise RenderError(f"{path}: a document without kind/apiVersion")
    return docs


def key_of(obj):
    md = obj.get("metadata") or {}
    return (obj.get("apiVersion"), obj.get("kind"), md.get("namespace"), md.get("name"))


def is_custom(obj):
    return (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_SCHEMAS


def merge(base, patch, where, custom=False):
    """Strategic merge restricted to maps (lists would need merge keys: refused), except
    that in a custom resource a list of scalars replaces the list (kustomize has no schema
    for it and does the same)."""
    for k, v in patch.items():
        if isinstance(v, list):
            if not (custom and all(not isinstance(x, (dict, list)) for x in v)):
                raise RenderError(f"{where}: patch field {k!r} is a list; this kustomize subset merges maps only "
                                  "(and replaces lists of scalars in custom resources)")
            base[k] = copy.deepcopy(v)
        elif v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v, f"{where}.{k}", custom)
        else:
            base[k] = copy.deepcopy(v)


def pod_containers(pod):
    """(container, is_init) for every container of a pod spec."""
    return [(c, False) for c in pod.get("containers", []) or []] + \
        [(c, True) for c in pod.get("initContainers", []) or []]


def set_images(obj, images, where):
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") if obj.get("kind") != "Pod" else spec
    if not isinstance(pod, dict):
        return
    for c, _ in pod_containers(pod):
        image = c.get("image", "")
        name, sep, ref = image, "", ""
        if "@" in image:
            name, sep, ref = image.partition("@")
        elif ":" in image.rsplit("/", 1)[-1]:
            name, _, ref = image.rpartition(":")
            sep = ":"
        for img in images:
            if img.get("name") != name:
                continue
            unknown = set(img) - {"name", "newName", "newTag", "digest"}
            if unknown:
                raise RenderError(f"{where}: images entry with unsupported keys {sorted(unknown)}")
            new = img.get("newName", name)
            if "digest" in img:
                new += "@" + img["digest"]
            elif "newTag" in img:
                new += ":" + str(img["newTag"])
            elif sep:
                new += sep + ref
            c["image"] = new


def render(directory):
    kfile = None
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.isfile(os.path.join(directory, n)):
            kfile = os.path.join(directory, n)
            break
    if kfile is None:
        raise RenderError(f"{directory}: no kustomization.yaml")
    with open(kfile, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(
            f"{kfile}: {sorted(unknown)} not supported by deploy/tools/validate_k8s.py's kustomize subset "
            "(extend it, or keep to resources/patches/images)"
        )
    objs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        objs.extend(render(p) if os.path.isdir(p) else load_docs(p))
    seen = set()
    for o in objs:
        if key_of(o) in seen:
            raise RenderError(f"{kfile}: {o['kind']}/{o['metadata'].get('name')} defined twice")
        seen.add(key_of(o))
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise RenderError(f"{kfile}: only patches given by 'path' are supported, got {sorted(patch)}")
        p = os.path.join(directory, patch["path"])
        for doc in load_docs(p):
            targets = [o for o in objs if key_of(o) == key_of(doc)]
            if not targets:
                raise RenderError(f"{p}: patch matches no resource {doc['kind']}/{doc['metadata'].get('name')}")
            body = {kk: vv for kk, vv in doc.items() if kk not in ("apiVersion", "kind")}
            merge(targets[0], body, p, is_custom(doc))
    for o in objs:
        set_images(o, k.get("images", []), kfile)
    return objs


def canonical(objs):
    return {key_of(o): json.dumps(o, sort_keys=True) for o in objs}


def compare_with_kubectl(directory, objs, problems):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return False
    res = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if res.returncode != 0:
        problems.append(f"{directory}: kubectl kustomize failed: {res.stderr.strip()}")
        return True
    theirs = canonical([d for d in yaml.safe_load_all(res.stdout) if d])
    ours = canonical(objs)
    for key in sorted(set(theirs) | set(ours), key=str):
        if theirs.get(key) != ours.get(key):
            problems.append(f"{directory}: {key[1]}/{key[3]} renders differently with kubectl kustomize")
    return True


class CustomValidator:
    """cert-manager objects against the vendored schemas, with jsonschema; metadata against
    the strict ObjectMeta of the Kubernetes version asked for (from kubernetes-validate)."""

    def __init__(self):
        import jsonschema  # noqa: imported late so --help works without it
        from referencing import Registry, Resource

        self.jsonschema = jsonschema
        self.Registry, self.Resource = Registry, Resource
        self.schemas = {}
        for key, name in CUSTOM_SCHEMAS.items():
            with open(os.path.join(SCHEMA_DIR, name), encoding="utf-8") as f:
                schema = json.load(f)
            jsonschema.Draft202012Validator.check_schema(schema)
            schema["properties"]["metadata"] = {"$ref": OBJECT_META}
            self.schemas[key] = schema
        self.registries = {}

    def registry(self, version):
        if version not in self.registries:
            from kubernetes_validate import utils as kv

            mm = kv.major_minor(version)
            known = [v for v in kv.all_versions() if kv.major_minor(v) <= mm]
            defs = kv.schema_contents(f"kubernetes-json-schema/v{known[-1]}-local-strict/_definitions.json", version)
            self.registries[version] = self.Resource.from_contents(defs) @ self.Registry()
        return self.registries[version]

    def errors(self, obj, version):
        schema = self.schemas[(obj["apiVersion"], obj["kind"])]
        v = self.jsonschema.Draft202012Validator(schema, registry=self.registry(version))
        return sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path))


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj.get("spec", {}).get("template", {})
    return None


def pod_volumes(w):
    """The volumes of a workload's pods by name, a StatefulSet's claim templates included."""
    volumes = {v["name"]: v for v in pod_spec(w).get("spec", {}).get("volumes", [])}
    for t in w.get("spec", {}).get("volumeClaimTemplates", []) if w["kind"] == "StatefulSet" else []:
        volumes[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "persistentVolumeClaim": {"template": True}}
    return volumes


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def env_value(c, name):
    for e in c.get("env", []) or []:
        if e.get("name") == name and "value" in e:
            return e["value"]
    return None


def setting(c, flag, env):
    """A CommonArgs setting of a ferry container: the flag, or the variable clap reads."""
    v = arg_value(c.get("args", []) or [], flag)
    return v if v is not None else env_value(c, env)


def host_port(addr):
    host, _, port = addr.split("://", 1)[-1].rpartition(":")
    return host, int(port) if port.isdigit() else None


def selects(selector, labels):
    """A label selector (matchLabels, matchExpressions) against a set of labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if (op == "In" and labels.get(k) not in vals) or (op == "NotIn" and k in labels and labels[k] in vals) \
                or (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels):
            return False
    return True


def admitted(policies, client, server, port, port_name):
    """Whether the NetworkPolicies let a pod labelled `client` reach `port` (TCP) of a pod
    labelled `server` in the same namespace. A peer with an ipBlock or a non-empty
    namespaceSelector is not counted (pod IPs and namespace labels are unknown here)."""
    applying = [p["spec"] for p in policies
                if selects(p["spec"].get("podSelector") or {}, server)
                and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not applying:
        return True
    for spec in applying:
        for rule in spec.get("ingress") or []:
            peers = rule.get("from")
            peer_ok = not peers or any(
                "podSelector" in peer and not peer.get("namespaceSelector") and "ipBlock" not in peer
                and selects(peer["podSelector"] or {}, client) for peer in peers)
            ports = rule.get("ports")
            port_ok = not ports or any(
                pp.get("protocol", "TCP") == "TCP"
                and (pp.get("port") is None or pp.get("port") in (port, port_name)
                     or (isinstance(pp.get("port"), int) and pp.get("endPort")
                         and pp["port"] <= port <= pp["endPort"]))
                for pp in ports)
            if peer_ok and port_ok:
                return True
    return False


def mount_of(c, volumes, path):
    """The deepest volume mount of container `c` that holds `path`: (mount, volume, key),
    key being the file's key in a ConfigMap or Secret volume (through `items` if any)."""
    best = None
    for m in c.get("volumeMounts", []) or []:
        prefix = m["mountPath"].rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(prefix) and (best is None or len(prefix) > len(best[1])):
            best = (m, prefix)
    if best is None:
        return None, {}, None
    m, prefix = best
    v = volumes.get(m["name"], {})
    rel = path[len(prefix):]
    if m.get("subPath"):
        rel = posixpath.join(m["subPath"], rel)
    src = v.get("configMap") or v.get("secret") or {}
    if src.get("items"):
        rel = next((i["key"] for i in src["items"] if i.get("path") == rel), None)
    return m, v, rel


def check_objects(where, objs, problems):
    def bad(msg):
        problems.append(f"{where}: {msg}")

    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    services = by_kind.get("Service", {})
    claims = by_kind.get("PersistentVolumeClaim", {})
    certificates = by_kind.get("Certificate", {})
    issuers = by_kind.get("Issuer", {})
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    cert_secrets = {c.get("spec", {}).get("secretName"): c for c in certificates.values()}
    workloads = [o for o in objs if pod_spec(o) is not None]

    def wname(w):
        return f"{w['kind']}/{w['metadata']['name']}"

    def labels_of(w):
        return pod_spec(w).get("metadata", {}).get("labels", {})

    # --- Kubernetes references the schemas cannot see ---------------------------------
    for w in workloads:
        name = wname(w)
        tmpl = pod_spec(w)
        sel = w.get("spec", {}).get("selector", {}).get("matchLabels", {})
        if not sel or any(labels_of(w).get(k) != v for k, v in sel.items()):
            bad(f"{name}: spec.selector.matchLabels does not match the pod template's labels")
        spec = tmpl.get("spec", {})
        volumes = pod_volumes(w)
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                bad(f"{name}: volume {v['name']} names a missing ConfigMap {v['configMap']['name']}")
            if "secret" in v and v["secret"]["secretName"] not in secrets \
                    and v["secret"]["secretName"] not in cert_secrets:
                bad(f"{name}: volume {v['name']} names a Secret {v['secret']['secretName']} that neither "
                    "exists nor is written by a Certificate")
            if "claimName" in v.get("persistentVolumeClaim", {}) and v["persistentVolumeClaim"]["claimName"] not in claims:
                bad(f"{name}: volume {v['name']} names a missing PersistentVolumeClaim "
                    f"{v['persistentVolumeClaim']['claimName']}")
        for c, _ in pod_containers(spec):
            cname = f"{name} container {c['name']}"
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in c.get("resources", {}).get(kind, {}):
                        bad(f"{cname}: no resources.{kind}.{res}")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = c.get(probe, {}).get(handler, {}).get("port")
                    if port is not None and port not in ports and port not in ports.values():
                        bad(f"{cname}: {probe} uses port {port!r}, which the container does not declare")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    bad(f"{cname}: volumeMount {m['mountPath']} names a missing volume {m['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    s = secrets.get(ref["name"])
                    if s is None:
                        bad(f"{cname}: env {e['name']} names a missing Secret {ref['name']}")
                    elif ref["key"] not in {**s.get("data", {}), **s.get("stringData", {})}:
                        bad(f"{cname}: env {e['name']}: Secret {ref['name']} has no key {ref['key']}")

    for s in services.values():
        sel = s["spec"].get("selector", {})
        pods = [w for w in workloads if all(labels_of(w).get(k) == v for k, v in sel.items())]
        if not sel or not pods:
            bad(f"Service/{s['metadata']['name']}: its selector matches no pod template")
            continue
        cports = [p for w in pods for c, _ in pod_containers(pod_spec(w)["spec"]) for p in c.get("ports", [])]
        for p in s["spec"].get("ports", []):
            t = p.get("targetPort", p["port"])
            if t not in {cp.get("name") for cp in cports} and t not in {cp["containerPort"] for cp in cports}:
                bad(f"Service/{s['metadata']['name']}: targetPort {t!r} is not a port of the selected pods")

    # --- cert-manager: issuers and one identity per role --------------------------------
    for i in issuers.values():
        ca = i.get("spec", {}).get("ca")
        if ca:
            c = cert_secrets.get(ca.get("secretName"))
            if ca.get("secretName") not in secrets and not (c and c["spec"].get("isCA")):
                bad(f"Issuer/{i['metadata']['name']}: its CA Secret {ca.get('secretName')} is neither a Secret nor "
                    "written by a Certificate with isCA: true")
    seen_secrets = {}
    certs_to_check = []
    for c in certificates.values():
        cn = f"Certificate/{c['metadata']['name']}"
        spec = c.get("spec", {})
        ref = spec.get("issuerRef", {})
        if ref.get("kind", "Issuer") == "Issuer" and ref.get("group", "cert-manager.io") == "cert-manager.io" \
                and ref.get("name") not in issuers:
            bad(f"{cn}: issuerRef names a missing Issuer {ref.get('name')}")
        if spec.get("secretName") in seen_secrets:
            bad(f"{cn}: secretName {spec.get('secretName')} is also written by {seen_secrets[spec.get('secretName')]}")
        seen_secrets[spec.get("secretName")] = cn
        if spec.get("isCA"):
            continue
        certs_to_check.append(c)

    # --- ferry's processes ---------------------------------------------------------------
    procs = []  # one dict per ferry container
    for w in workloads:
        name = wname(w)
        spec = pod_spec(w).get("spec", {})
        volumes = pod_volumes(w)
        containers = pod_containers(spec)
        foreign = [c["name"] for c, _ in containers if not (c.get("command") or [""])[0].startswith("ferry-")]
        for c, init in containers:
            command = (c.get("command") or [""])[0]
            if not command.startswith("ferry-"):
                continue
            role = command.removeprefix("ferry-")
            cname = f"{name} container {c['name']}"
            if role not in ROLES:
                bad(f"{cname}: {command} is not one of ferry's processes ({', '.join('ferry-' + r for r in ROLES)})")
                continue
            if init and c.get("restartPolicy") != "Always":
                bad(f"{cname}: a ferry process as an init container needs restartPolicy: Always (a native "
                    "sidecar); a plain init container never finishes and holds the pod back")
            if w["kind"] == "Deployment" and w.get("spec", {}).get("strategy", {}).get("type") != "Recreate":
                bad(f"{name}: strategy must be Recreate (two pods of one ferry process must not overlap)")
            if role in ("reader", "watcher") and w.get("spec", {}).get("replicas", 1) != 1:
                bad(f"{name}: replicas must be 1 ({role}s of one deployment must not overlap)")
            cfg_path = setting(c, "--config", "FERRY_CONFIG")
            if cfg_path is None:
                bad(f"{cname}: no --config argument (nor FERRY_CONFIG)")
                continue
            m, v, key = mount_of(c, volumes, cfg_path)
            text = configmaps.get(v.get("configMap", {}).get("name"), {}).get("data", {}).get(key) if m else None
            if text is None:
                bad(f"{cname}: --config {cfg_path} is not a key of a mounted ConfigMap")
                continue
            try:
                cfg = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                bad(f"{cname}: {cfg_path} is not valid TOML: {e}")
                continue
            procs.append({"w": w, "name": name, "cname": cname, "c": c, "init": init, "role": role, "cfg": cfg,
                          "path": cfg_path, "volumes": volumes, "foreign": foreign, "labels": labels_of(w),
                          "ports": {p["containerPort"]: p.get("name") for p in c.get("ports", [])}})

    watchers = [p for p in procs if p["role"] == "watcher"]
    readers = {}
    for p in procs:
        cname, c, cfg, role, volumes = p["cname"], p["c"], p["cfg"], p["role"], p["volumes"]
        known = {"source", "target", "coordinator", "reader", "decoder", "writer", "log", "filter", "grpc", "telemetry",
                 "watcher"}
        for section in set(cfg) - known:
            bad(f"{cname}: {p['path']} has an unknown section [{section}]")
        for side in ("source", "target"):
            pw = cfg.get(side, {}).get("password", "")
            if pw and not (pw.startswith("${") and pw.endswith("}")):
                bad(f"{cname}: {p['path']}: {side}.password is written in clear; use \"${{VAR}}\" and the Secret")

        # Mutual TLS with this role's own certificate.
        grpc = cfg.get("grpc", {})
        if grpc.get("insecure"):
            bad(f"{cname}: {p['path']}: [grpc] insecure = true; the manifests run every link over mutual TLS")
        p["cert"] = None
        tls_secrets = set()
        writable = set()
        for field, want in TLS_FILES.items():
            path = grpc.get(field, "").replace("{role}", role)
            if not path:
                bad(f"{cname}: {p['path']}: [grpc] {field} is not set (mutual TLS between ferry's processes)")
                continue
            m, v, key = mount_of(c, volumes, path)
            secret = v.get("secret", {}).get("secretName") if m else None
            if secret is None:
                bad(f"{cname}: [grpc] {field} = {path!r} is not in a mounted Secret")
                continue
            if not m.get("readOnly") and m["mountPath"] not in writable:
                writable.add(m["mountPath"])
                bad(f"{cname}: the Secret {secret} at {m['mountPath']} must be mounted readOnly")
            if key != want:
                bad(f"{cname}: [grpc] {field} = {path!r} is key {key!r} of Secret {secret}; cert-manager writes "
                    f"this file as {want!r}")
            tls_secrets.add(secret)
        if len(tls_secrets) > 1:
            bad(f"{cname}: [grpc] files come from several Secrets {sorted(tls_secrets)}; one Certificate's Secret holds all three")
        for secret in tls_secrets:
            cert = cert_secrets.get(secret)
            if cert is None:
                bad(f"{cname}: Secret {secret} is not written by a Certificate of this kustomization")
                continue
            crole = cert["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            if crole != role:
                bad(f"{cname}: mounts the certificate of Certificate/{cert['metadata']['name']} (role {crole}); a "
                    f"ferry-{role} must present its own role's certificate")
            p["cert"] = cert

        if role == "coordinator":
            # It hands these out as addresses to dial: they must be Services with that port.
            for stage in ("decoder", "writer"):
                section = cfg.get(stage, {})
                field = "advertise" if section.get("advertise") else "listen"
                addr = section.get(field, "")
                host, port = host_port(addr)
                svc = services.get(host.split(".")[0])
                if svc is None or port not in [sp["port"] for sp in svc["spec"].get("ports", [])]:
                    bad(f"{cname}: {p['path']}: [{stage}] {field} = {addr!r} is handed to the stages as the "
                        "address to dial, so it must name a Service and its port")
            state = cfg.get("coordinator", {}).get("state_file", "")
            if not state:
                if watchers:
                    bad(f"{cname}: {p['path']}: [coordinator] state_file is not set; ferry-watcher run requires it")
            else:
                m, v, _ = mount_of(c, volumes, state)
                if m is None or m.get("readOnly") or "persistentVolumeClaim" not in v:
                    bad(f"{cname}: [coordinator] state_file = {state!r} must be on a writable PersistentVolumeClaim "
                        "mount (the role must survive a rescheduled coordinator; the root filesystem is read-only)")
        else:
            coord = setting(c, "--coordinator", "FERRY_COORDINATOR")
            if coord is None:
                bad(f"{cname}: no --coordinator argument (nor FERRY_COORDINATOR)")
            else:
                p.setdefault("dials", []).append(("coordinator", coord))
        if role in ("decoder", "writer"):
            addr = cfg.get(role, {}).get("listen", "")
            try:
                ipaddress.ip_address(host_port(addr)[0].strip("[]"))
            except ValueError:
                bad(f"{cname}: {p['path']}: [{role}] listen = {addr!r} must be an IP address to bind")
            if host_port(addr)[1] not in p["ports"]:
                bad(f"{cname}: [{role}] listen port of {addr!r} is not a container port")
        if role == "decoder":
            section = cfg.get("writer", {})
            p.setdefault("dials", []).append(("writer", section.get("advertise") or section.get("listen", "")))
        if role == "watcher":
            args = c.get("args", []) or []
            if not args or args[0] != "run":
                bad(f"{cname}: a watcher Deployment runs `ferry-watcher run` (args start with run), got {args}")
        if role == "reader":
            section = cfg.get("decoder", {})
            p.setdefault("dials", []).append(("decoder", section.get("advertise") or section.get("listen", "")))
            spool = cfg.get("reader", {}).get("spool_dir", "")
            m, v, _ = mount_of(c, volumes, spool) if spool else (None, {}, None)
            if m is None or m.get("readOnly") or not ("emptyDir" in v or "persistentVolumeClaim" in v):
                bad(f"{cname}: [reader] spool_dir = {spool!r} must be a writable emptyDir (or volume claim) mount: "
                    "the root filesystem is read-only, and the system temp dir with it")
            pipeline = setting(c, "--pipeline", "FERRY_PIPELINE")
            pl = pipeline or "(all)"
            if pl in readers:
                bad(f"{cname}: pipeline {pl} is also served by {readers[pl]}")
            readers[pl] = cname
            if pl == "(all)" and len(readers) > 1:
                bad(f"{cname}: a reader without --pipeline serves all pipelines; another reader overlaps it")
            src = cfg.get("source", {})
            kind = src.get("type", "standalone")
            if pipeline is not None:
                want = {"standalone": src.get("address"), "sentinel": f"sentinel-{src.get('master_name')}",
                        "file": "file"}.get(kind)
                if (kind == "cluster" and not pipeline.startswith("shard-")) or (want is not None and pipeline != want):
                    bad(f"{cname}: --pipeline {pipeline} is not a pipeline a {kind} source is planned as "
                        f"({'shard-<first slot>' if kind == 'cluster' else want})")
            if p["foreign"]:
                # A sidecar: in the pod of the Redis it reads.
                if not (p["init"] and c.get("restartPolicy") == "Always"):
                    bad(f"{cname}: a reader beside {p['foreign']} runs as a native sidecar (an initContainers entry "
                        "with restartPolicy: Always), so it starts before and stops after the server it reads")
                if pipeline is None:
                    bad(f"{cname}: a sidecar reader needs --pipeline (its own leader's pipeline)")
                w = p["w"]
                if w["kind"] == "StatefulSet":
                    own = f"{w['metadata']['name']}-0.{w['spec'].get('serviceName')}"
                    host = host_port(src.get("address", ""))[0]
                    if kind != "standalone" or not (host == own or host.startswith(own + ".")):
                        bad(f"{cname}: a sidecar reads its own pod's Redis: [source] must be standalone at {own} "
                            f"(the StatefulSet's pod), got {kind} {src.get('address', '')!r}")

    # Each role's certificate names: [grpc.identities] of the (one) config, else ferry-<role>.
    identities = (procs[0]["cfg"].get("grpc", {}).get("identities", {}) if procs else {})

    def names_of(role):
        return identities.get(role) or [f"ferry-{role}"]

    for c in certs_to_check:
        cn = f"Certificate/{c['metadata']['name']}"
        spec = c.get("spec", {})
        role = c["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if role not in GRPC_ROLES:
            bad(f"{cn}: label app.kubernetes.io/component must name its ferry role ({', '.join(GRPC_ROLES)})")
            continue
        names = spec.get("dnsNames") or []
        if not set(names_of(role)) & set(names):
            bad(f"{cn}: dnsNames {names} lack {' or '.join(names_of(role))}, the name of role {role} that "
                "ferry's processes authorise callers by")
        others = [n for n in names if n in {x for r in GRPC_ROLES if r != role for x in names_of(r)}]
        if others:
            bad(f"{cn}: dnsNames also name other roles ({others}): one certificate, one role")
        usages = spec.get("usages") or ["digital signature", "key encipherment"]
        for u in ("server auth", "client auth"):
            if u not in usages:
                bad(f"{cn}: usages lack {u!r} (each process presents one certificate as server and as client)")

    if os.path.basename(os.path.normpath(where)) == "sidecar" and \
            not any(p["role"] == "reader" and p["foreign"] and p["init"] for p in procs):
        bad("the sidecar overlay has no reader running as a native sidecar in its leader's pod")

    # --- each gRPC link: a name the server's certificate carries, admitted by policy -----
    for p in procs:
        for target, addr in p.get("dials", []):
            host, port = host_port(addr)
            svc = services.get(host.split(".")[0])
            sport = next((sp for sp in (svc or {}).get("spec", {}).get("ports", []) if sp["port"] == port), None)
            if sport is None:
                what = "--coordinator" if target == "coordinator" else f"the {target}'s advertised address"
                bad(f"{p['cname']}: {what} {addr!r} is not a Service and port of this deployment")
                continue
            t = sport.get("targetPort", port)
            servers = [q for q in procs if q["role"] == target
                       and all(q["labels"].get(k) == v for k, v in svc["spec"].get("selector", {}).items())
                       and (t in q["ports"] or t in q["ports"].values())]
            if not servers:
                bad(f"{p['cname']}: dials the {target} at {addr!r}, but Service {svc['metadata']['name']} selects "
                    f"no ferry-{target} with port {t!r}")
                continue
            name = p["cfg"].get("grpc", {}).get("tls_server_name") or host
            for q in servers:
                cport = t if isinstance(t, int) else next(n for n, nm in q["ports"].items() if nm == t)
                if q["cert"] is not None and name not in (q["cert"]["spec"].get("dnsNames") or []):
                    bad(f"{p['cname']}: dials {name!r}, which Certificate/{q['cert']['metadata']['name']} of "
                        f"{q['cname']} does not name (hostname verification would fail)")
                if not admitted(policies, p["labels"], q["labels"], cport, q["ports"].get(cport)):
                    bad(f"{p['cname']}: the NetworkPolicies do not let it reach {q['cname']} on port {cport}")

    # Every process reads the same configuration (the addresses to bind aside).
    def neutral(cfg):
        cfg = copy.deepcopy(cfg)
        for stage in ("decoder", "writer"):
            cfg.get(stage, {}).pop("listen", None)
        return cfg

    seen = {}
    for p in procs:
        seen.setdefault(p["path"], p["cfg"])
    if len({json.dumps(neutral(c), sort_keys=True) for c in seen.values()}) > 1:
        bad(f"the config files {sorted(seen)} differ in more than [decoder]/[writer] listen")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="kustomization directories")
    ap.add_argument("-k", "--kubernetes-version", action="append", default=None)
    ap.add_argument("--no-kubectl", action="store_true", help="skip the comparison with kubectl kustomize")
    opts = ap.parse_args()
    versions = opts.kubernetes_version or ["1.28.0", "1.37.0"]

    import kubernetes_validate  # noqa: imported late so --help works without it

    custom = CustomValidator()
    problems = []
    count = 0
    custom_count = 0
    compared = 0
    for d in opts.dirs:
        try:
            objs = render(d)
        except (RenderError, OSError) as e:
            problems.append(str(e))
            continue
        if not opts.no_kubectl and compare_with_kubectl(d, objs, problems):
            compared += 1
        for o in objs:
            count += 1
            what = f"{d}: {o['kind']}/{o['metadata'].get('name')}"
            if is_custom(o):
                # The body is the same for every version (only metadata's schema differs):
                # one line per error, with the versions it holds for.
                custom_count += 1
                found = {}
                for v in versions:
                    for e in custom.errors(o, v):
                        path = "/".join(str(p) for p in e.absolute_path) or "(top)"
                        found.setdefault((path, e.message), []).append(v)
                for (path, message), vs in found.items():
                    problems.append(f"{what} (vendored {o['apiVersion']} schema, metadata as in Kubernetes "
                                    f"{', '.join(vs)}): {path}: {message}")
                continue
            for v in versions:
                try:
                    kubernetes_validate.validate(o, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(p) for p in e.absolute_path) or "(top)"
                    problems.append(f"{what} (Kubernetes {v}): {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problems.append(f"{what}: {e.message}")
        check_objects(d, objs, problems)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print(f"manifests: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    extra = f", rendering equal to kubectl kustomize for {compared}" if compared else ""
    print(f"manifests: {count} objects in {len(opts.dirs)} kustomizations valid "
          f"(Kubernetes {', '.join(versions)} schemas, strict; {custom_count} cert-manager objects against "
          f"the vendored cert-manager.io/v1 schemas{extra}); ferry's wiring checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
