"""Deployment: BatchNorm folding, a jaxpr -> ONNX converter for the YOLOX models, the export CLI
and ONNX runtime backends (onnxruntime, OpenVINO) for `Predictor`."""
