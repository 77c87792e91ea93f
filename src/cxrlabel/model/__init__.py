"""Triage model trained from the crowd labels (optional extra ``cxrlabel[model]``).

Training (``train.py``) needs PyTorch; prediction (``infer.py``) needs only ONNX Runtime.
Nothing here is imported by the rest of cxrlabel except through ``infer.model_opinion``.
"""
