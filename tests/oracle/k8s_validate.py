"""Test oracle, run with the ray/kubernetes side venv's Python: validate exported Kubernetes manifests.

Usage: python k8s_validate.py MANIFEST.yaml  ->  one JSON line {"ok": bool, "checked": [...], "errors": [...]}
Pod templates go through the `kubernetes` package's typed models (a field the model does not know is lost on
the round trip, which counts as an error); a RayService's serveConfigV2 through Ray Serve's own schema.
"""

import json
import sys

import yaml
from kubernetes.client import ApiClient

API = ApiClient()


def pod_template(where: str, data: dict, errors: list, checked: list) -> None:
    try:
        model = API._ApiClient__deserialize(data, "V1PodTemplateSpec")
    except (TypeError, ValueError) as exc:
        errors.append(f"{where}: {exc}")
        return
    back = API.sanitize_for_serialization(model)
    if back != data:
        errors.append(f"{where}: fields the V1PodTemplateSpec model does not know (lost on the round trip)")
    checked.append(f"{where}: V1PodTemplateSpec")


def ray_cluster(where: str, spec: dict, errors: list, checked: list) -> None:
    pod_template(f"{where}.headGroupSpec.template", spec["headGroupSpec"]["template"], errors, checked)
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        pod_template(f"{where}.workerGroupSpecs[{i}].template", group["template"], errors, checked)


def main() -> int:
    with open(sys.argv[1]) as f:
        doc = yaml.safe_load(f)
    errors: list[str] = []
    checked: list[str] = []
    kind = doc["kind"]
    if kind == "RayService":
        from ray.serve.schema import ServeDeploySchema

        try:
            ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
            checked.append("spec.serveConfigV2: ray.serve.schema.ServeDeploySchema")
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, reported as data
            errors.append(f"spec.serveConfigV2: {exc}")
        ray_cluster("spec.rayClusterConfig", doc["spec"]["rayClusterConfig"], errors, checked)
    elif kind == "RayCluster":
        ray_cluster("spec", doc["spec"], errors, checked)
    elif kind == "LeaderWorkerSet":
        lwt = doc["spec"]["leaderWorkerTemplate"]
        for key in ("leaderTemplate", "workerTemplate"):
            if key in lwt:
                pod_template(f"spec.leaderWorkerTemplate.{key}", lwt[key], errors, checked)
    else:
        errors.append(f"unknown kind {kind}")
    print(json.dumps({"ok": not errors, "checked": checked, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
