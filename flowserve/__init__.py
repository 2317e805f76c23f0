"""flowserve: normalizing flows trained on your data, served over HTTP.

Sub-packages: ``flowserve.models`` (training side, torch), ``flowserve.service`` (serving side,
ONNX Runtime, no torch), and the stand-alone client ``flowserve_client``. The artifact contract
both sides share is :mod:`flowserve.artifact`.
"""

__version__ = "0.1.0"
