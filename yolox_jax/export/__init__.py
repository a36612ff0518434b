"""Deployment: BatchNorm folding (`fold`), a jaxpr -> ONNX converter for the YOLOX models
(`onnx`), `export_onnx` with the official interface (`exporter`), and the onnxruntime / OpenVINO
backends of `Predictor` (`runtime`). The command line is `yolox_jax/cli/export.py`."""
