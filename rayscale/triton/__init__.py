"""The Triton Inference Server baseline: the same model, the same batch limits, the same client.

* ``install``: a managed environment with the ``tritonserver`` binary bundled in nvidia-pytriton;
* ``repository``: model repositories (Python backend for the bundled server, onnxruntime backend
  for the official container, one repository per GPU count);
* ``server``: start, stop and inspect a local server (``triton_up`` / ``triton_down`` / ``triton_status``);
"""

from rayscale.triton.install import TritonInstall, ensure_triton
from rayscale.triton.repository import ModelBatching, write_onnxruntime_repo, write_python_backend_repo
from rayscale.triton.server import TritonConfig, TritonServer, TritonStatus, triton_down, triton_status, triton_up

__all__ = [
    "ModelBatching",
    "TritonConfig",
    "TritonInstall",
    "TritonServer",
    "TritonStatus",
    "ensure_triton",
    "triton_down",
    "triton_status",
    "triton_up",
    "write_onnxruntime_repo",
    "write_python_backend_repo",
]
