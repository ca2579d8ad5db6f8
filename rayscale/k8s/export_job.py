"""The Job that exports the model once into the model volume (never into git or the image)."""

from __future__ import annotations

from typing import Any

from rayscale.k8s.blocks import MODEL_DIR_IN_POD, MODELS_MOUNT, MODELS_PVC, RAY_USER, labels, meta, resources, volume_pvc

__all__ = ["export_job"]


def export_job(image: str, namespace: str) -> dict[str, Any]:
    """The Job that writes the model into the model volume, or finds it there already."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("rayscale-export", namespace, "export"),
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels("rayscale", "export")},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": dict(RAY_USER),
                    "containers": [
                        {
                            "name": "export",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            # An existing export is kept: delete the directory to export again.
                            "command": [
                                "sh",
                                "-c",
                                f"if [ -f {MODEL_DIR_IN_POD}/model.json ]; then "
                                f"echo 'model already exported at {MODEL_DIR_IN_POD}'; "
                                f"else exec rayscale export --out {MODEL_DIR_IN_POD}; fi",
                            ],
                            "resources": resources(4, "16Gi"),
                            "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}],
                        }
                    ],
                    "volumes": [volume_pvc("models", MODELS_PVC, read_only=False)],
                },
            },
        },
    }
