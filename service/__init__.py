"""The serving side: FastAPI + ONNX Runtime, no torch.

Modules: ``settings`` (ServiceSettings), ``runtime`` (OnnxFlowModel, TorchScriptFlowModel),
``repository`` (ModelRepository), ``batching`` (InferenceEngine, DynamicBatcher), ``codec``
(bodies <-> numpy), ``errors``, ``limits``, ``metrics``, ``schemas``, ``routes_*``, ``app``
(create_app) and ``cli`` (``flowserve serve``). Import them by name; this package imports nothing,
so ``flowserve.service.runtime`` works without FastAPI installed.
"""

__all__: list[str] = []
