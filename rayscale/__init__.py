"""rayscale: how well does a vision inference service scale, and what does each image cost?

A small library with a thin CLI on top. Modules, one per concept:
export (OpenCLIP ViT-B/32 -> ONNX), engine (onnxruntime session), protocol (Open
Inference Protocol), serve (Ray Serve app), loadgen (load generator), metrics,
triton (baseline), report, results.
"""

__version__ = "0.1.0"
