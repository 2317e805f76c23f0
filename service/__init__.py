"""The serving side: FastAPI + ONNX Runtime, no torch."""
