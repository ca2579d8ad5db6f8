"""The Triton Python-backend model file (model.py), copied into generated model repositories."""
