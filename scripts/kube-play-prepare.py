#!/usr/bin/env python3
"""Turns rendered Kubernetes manifests (`kubectl kustomize ...`) into what `podman kube play` (4.3 and later) runs.

    kubectl kustomize deploy/kubernetes/overlays/podman-test |
      .venv-deploy/bin/python scripts/kube-play-prepare.py --secrets DIR --ports PORTS > play.yaml
    for f in DIR/*.json; do podman secret create "$(basename "$f" .json)" "$f"; done
    podman kube play play.yaml

The pods, their containers, probes and settings stay as the manifests say; only what podman cannot take as it is
changes:
- Secrets are written to DIR as podman secrets instead (one JSON object per Secret, each key's value base64), and
  left out of the output. Podman 4.3 stores a Secret played from YAML as YAML but reads secretKeyRef values back
  as JSON, so pods that use one fail to start; a podman secret made from the JSON form works on every version.
- Services and PodDisruptionBudgets are left out: podman has no cluster network or eviction API. Pods reach each
  other by pod name on podman's kube network (why the demo PostgreSQL is a Pod named like its Service).
- Every container port is published on 127.0.0.1 only, at --port-base, --port-base + 1, ... in file order (the
  mapping goes to --ports as "<pod> <container> <port name> <host port>" lines). Podman 4.3 publishes a
  containerPort without hostPort on every address at the same number, so two pods of port 8088 collide and
  the database would be open to the network.
- Pods come before Deployments (see ORDER).
- Deployments' pods restart OnFailure instead of Always: podman (4.3) applies the pod's restart policy to init
  containers too, so a wait-for-database that succeeded is started again and the pod never comes up. A container
  that dies (the test kills the worker) still restarts.
Everything else (ConfigMaps, PersistentVolumeClaims as named volumes, Deployments, Pods, probes, security
contexts, init containers) passes through.

Needs PyYAML (scripts/test-image.sh runs it from .venv-deploy).
"""

import argparse
import base64
import json
import pathlib
import sys

import yaml

DROPPED = {"Service", "PodDisruptionBudget"}
# Kubernetes starts everything at once; podman plays the file in order and waits for each pod's init containers,
# so whatever they wait for (the database Pod) must come before the Deployments.
ORDER = {"ConfigMap": 0, "PersistentVolumeClaim": 1, "Pod": 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", required=True, type=pathlib.Path, help="folder for the podman secrets' JSON")
    parser.add_argument("--port-base", type=int, default=18100, help="first host port on 127.0.0.1")
    parser.add_argument("--ports", required=True, type=pathlib.Path, help="where to write the port mapping")
    args = parser.parse_args()
    args.secrets.mkdir(parents=True, exist_ok=True)

    kept = []
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc:
            continue
        kind = doc.get("kind")
        name = doc.get("metadata", {}).get("name", "?")
        if kind == "Secret":
            values = {key: value for key, value in (doc.get("data") or {}).items()}
            for key, value in (doc.get("stringData") or {}).items():
                values[key] = base64.b64encode(str(value).encode()).decode()
            (args.secrets / f"{name}.json").write_text(json.dumps(values))
            print(f"kube-play-prepare: Secret/{name} -> podman secret {name}", file=sys.stderr)
        elif kind in DROPPED:
            print(f"kube-play-prepare: {kind}/{name} left out (no podman equivalent)", file=sys.stderr)
        else:
            if kind == "Deployment":
                doc["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
            kept.append(doc)
    kept.sort(key=lambda doc: ORDER.get(doc.get("kind"), len(ORDER)))
    mapping = []
    for doc in kept:
        if doc.get("kind") == "Deployment":
            pod, spec = f'{doc["metadata"]["name"]}-pod-0', doc["spec"]["template"]["spec"]
        elif doc.get("kind") == "Pod":
            pod, spec = doc["metadata"]["name"], doc["spec"]
        else:
            continue
        for container in spec.get("containers", []):
            for port in container.get("ports", []):
                port["hostIP"] = "127.0.0.1"
                port["hostPort"] = args.port_base + len(mapping)
                mapping.append(f'{pod} {container["name"]} {port.get("name", port["containerPort"])} {port["hostPort"]}')
    args.ports.write_text("".join(line + "\n" for line in mapping))
    yaml.safe_dump_all(kept, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
