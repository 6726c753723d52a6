#!/usr/bin/env python3
"""Render ferry's kustomizations and validate every object.

kustomize itself is neither on PyPI nor in Debian, so this renders with a small subset of
it: `resources` (files and directories), `patches` given by `path` (strategic merge of
maps, matched by apiVersion/kind/name) and `images`. Any other key, or a patch that
contains a list, is refused, so the subset never silently renders something kustomize
would render differently. Where `kubectl` is installed, its built-in kustomize renders
the same directories and the two results must be equal.

Then, for every rendered object:
  * the Kubernetes JSON schema (kubernetes-validate, strict: unknown fields are errors),
    for each version given with --kubernetes-version;
  * what the schemas cannot see: Deployment selectors match their pod labels, Services
    select a pod and name its ports, ConfigMap/Secret references and keys exist, probes
    name a container port, every container has requests and limits;
  * ferry's own wiring: each --config file is in the mounted ConfigMap and parses as TOML,
    the stages bind IP addresses while the coordinator's config names the decoder and
    writer Services (it hands those addresses to the stages), --coordinator names the
    coordinator's gRPC Service, the two config files differ only in those addresses, and
    no two readers serve the same --pipeline.

Exit status 0 when everything is valid; 1 with one line per problem otherwise.
"""

import argparse
import copy
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tomllib

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


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


def merge(base, patch, where):
    """Strategic merge restricted to maps (lists would need merge keys: refused)."""
    for k, v in patch.items():
        if isinstance(v, list):
            raise RenderError(f"{where}: patch field {k!r} is a list; this kustomize subset merges maps only")
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v, f"{where}.{k}")
        else:
            base[k] = copy.deepcopy(v)


def set_images(obj, images, where):
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") if obj.get("kind") != "Pod" else spec
    if not isinstance(pod, dict):
        return
    for c in pod.get("containers", []) + pod.get("initContainers", []):
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
            merge(targets[0], body, p)
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


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj.get("spec", {}).get("template", {})
    return None


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def host_port(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port) if port.isdigit() else None


def check_objects(where, objs, problems):
    def bad(msg):
        problems.append(f"{where}: {msg}")

    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    services = by_kind.get("Service", {})
    workloads = [o for o in objs if pod_spec(o) is not None]
    configs = {}  # (workload, container) -> (path, parsed toml, raw text)
    pipelines = {}

    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        tmpl = pod_spec(w)
        labels = tmpl.get("metadata", {}).get("labels", {})
        sel = w.get("spec", {}).get("selector", {}).get("matchLabels", {})
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            bad(f"{name}: spec.selector.matchLabels does not match the pod template's labels")
        spec = tmpl.get("spec", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                bad(f"{name}: volume {v['name']} names a missing ConfigMap {v['configMap']['name']}")
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                bad(f"{name}: volume {v['name']} names a missing Secret {v['secret']['secretName']}")
        for c in spec.get("containers", []):
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
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    s = secrets.get(ref["name"])
                    if s is None:
                        bad(f"{cname}: env {e['name']} names a missing Secret {ref['name']}")
                    elif ref["key"] not in {**s.get("data", {}), **s.get("stringData", {})}:
                        bad(f"{cname}: env {e['name']}: Secret {ref['name']} has no key {ref['key']}")
            command = (c.get("command") or [""])[0]
            if not command.startswith("ferry-"):
                continue
            args = c.get("args", [])
            cfg_path = arg_value(args, "--config")
            if cfg_path is None:
                bad(f"{cname}: no --config argument")
                continue
            text = None
            for m in c.get("volumeMounts", []):
                prefix = m["mountPath"].rstrip("/") + "/"
                v = volumes.get(m["name"], {})
                if cfg_path.startswith(prefix) and "configMap" in v:
                    cm = configmaps.get(v["configMap"]["name"], {})
                    text = cm.get("data", {}).get(cfg_path[len(prefix):])
            if text is None:
                bad(f"{cname}: --config {cfg_path} is not a key of a mounted ConfigMap")
                continue
            try:
                cfg = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                bad(f"{cname}: {cfg_path} is not valid TOML: {e}")
                continue
            configs[(name, c["name"])] = (command, cfg_path, cfg)
            known = {"source", "target", "coordinator", "reader", "decoder", "writer", "log", "filter", "grpc", "telemetry",
                     "watcher"}
            for section in set(cfg) - known:
                bad(f"{cname}: {cfg_path} has an unknown section [{section}]")
            for side in ("source", "target"):
                pw = cfg.get(side, {}).get("password", "")
                if pw and not (pw.startswith("${") and pw.endswith("}")):
                    bad(f"{cname}: {cfg_path}: {side}.password is written in clear; use \"${{VAR}}\" and the Secret")
            if command == "ferry-coordinator":
                # It hands these out as addresses to dial: they must be Services with that port.
                for stage in ("decoder", "writer"):
                    section = cfg.get(stage, {})
                    field = "advertise" if section.get("advertise") else "listen"
                    addr = section.get(field, "")
                    host, port = host_port(addr)
                    svc = services.get(host.split(".")[0])
                    if svc is None or port not in [p["port"] for p in svc["spec"].get("ports", [])]:
                        bad(f"{cname}: {cfg_path}: [{stage}] {field} = {addr!r} is handed to the stages as the "
                            "address to dial, so it must name a Service and its port")
            else:
                coord = arg_value(args, "--coordinator")
                if coord is None:
                    bad(f"{cname}: no --coordinator argument")
                else:
                    host, port = host_port(coord.split("://", 1)[-1])
                    svc = services.get(host.split(".")[0])
                    if svc is None or port not in [p["port"] for p in svc["spec"].get("ports", [])]:
                        bad(f"{cname}: --coordinator {coord} is not a Service and port of this deployment")
                stage = command.removeprefix("ferry-")
                if stage in ("decoder", "writer"):
                    addr = cfg.get(stage, {}).get("listen", "")
                    try:
                        ipaddress.ip_address(host_port(addr)[0].strip("[]"))
                    except ValueError:
                        bad(f"{cname}: {cfg_path}: [{stage}] listen = {addr!r} must be an IP address to bind")
                    if host_port(addr)[1] not in ports.values():
                        bad(f"{cname}: [{stage}] listen port of {addr!r} is not a container port")
                if stage == "reader":
                    p = arg_value(args, "--pipeline") or "(all)"
                    if p in pipelines:
                        bad(f"{cname}: pipeline {p} is also served by {pipelines[p]}")
                    pipelines[p] = cname
                    if p == "(all)" and len(pipelines) > 1:
                        bad(f"{cname}: a reader without --pipeline serves all pipelines; another reader overlaps it")

    for s in services.values():
        sel = s["spec"].get("selector", {})
        pods = [w for w in workloads
                if all(pod_spec(w).get("metadata", {}).get("labels", {}).get(k) == v for k, v in sel.items())]
        if not sel or not pods:
            bad(f"Service/{s['metadata']['name']}: its selector matches no pod template")
            continue
        names = {p.get("name") for w in pods for c in pod_spec(w)["spec"]["containers"] for p in c.get("ports", [])}
        nums = {p["containerPort"] for w in pods for c in pod_spec(w)["spec"]["containers"] for p in c.get("ports", [])}
        for p in s["spec"].get("ports", []):
            t = p.get("targetPort", p["port"])
            if t not in names and t not in nums:
                bad(f"Service/{s['metadata']['name']}: targetPort {t!r} is not a port of the selected pods")

    # Every process reads the same configuration (the addresses to bind aside).
    def neutral(cfg):
        cfg = copy.deepcopy(cfg)
        for stage in ("decoder", "writer"):
            cfg.get(stage, {}).pop("listen", None)
        return cfg

    seen = {}
    for (wname, cname), (command, path, cfg) in configs.items():
        seen.setdefault(path, (wname, cfg))
    if len({json.dumps(neutral(c), sort_keys=True) for _, c in seen.values()}) > 1:
        bad(f"the config files {sorted(seen)} differ in more than [decoder]/[writer] listen")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="kustomization directories")
    ap.add_argument("-k", "--kubernetes-version", action="append", default=None)
    ap.add_argument("--no-kubectl", action="store_true", help="skip the comparison with kubectl kustomize")
    opts = ap.parse_args()
    versions = opts.kubernetes_version or ["1.28.0", "1.37.0"]

    import kubernetes_validate  # noqa: imported late so --help works without it

    problems = []
    count = 0
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
            for v in versions:
                try:
                    kubernetes_validate.validate(o, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(p) for p in e.absolute_path) or "(top)"
                    problems.append(f"{d}: {o['kind']}/{o['metadata'].get('name')} (Kubernetes {v}): "
                                    f"{path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problems.append(f"{d}: {o['kind']}/{o['metadata'].get('name')}: {e.message}")
        check_objects(d, objs, problems)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print(f"manifests: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    extra = f", rendering equal to kubectl kustomize for {compared}" if compared else ""
    print(f"manifests: {count} objects in {len(opts.dirs)} kustomizations valid "
          f"(Kubernetes {', '.join(versions)} schemas, strict{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
