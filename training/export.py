"""Export an embedding checkpoint to TorchScript and ONNX (and INT8 ONNX for CPU), and check they agree.

Exported graphs take a normalised float batch ``(N, 3, H, W)`` and return the raw ``(N, D)`` embedding (the
same as the PyTorch model in eval mode); L2 normalisation stays outside, as in ``Embedder``. The ONNX export
and ``OnnxEmbedder`` live in ``reid.onnx_embedder`` (the services run the body model with them, and services
never import training); they are re-exported here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from reid.embedder import Embedder
from reid.images import ImageLike
from reid.models import load_checkpoint
from reid.onnx_embedder import OnnxEmbedder, export_onnx

__all__ = [
    "OnnxEmbedder",
    "calibration_batch",
    "compare_exports",
    "export_onnx",
    "export_torchscript",
    "quantize_onnx_int8",
]

logger = logging.getLogger(__name__)


def export_torchscript(checkpoint: str | Path, out: str | Path) -> Path:
    model, meta = load_checkpoint(checkpoint)
    h, w = meta.input_size
    traced = torch.jit.trace(model.eval(), torch.randn(2, 3, h, w), check_trace=True)
    traced.save(str(out))
    return Path(out)


def quantize_onnx_int8(
    onnx_path: str | Path,
    out: str | Path,
    calibration: np.ndarray | None = None,
    method: str = "static",
) -> Path:
    """INT8 ONNX model for CPU inference with ONNX Runtime.

    ``static`` (default, needs ``calibration``: a few hundred preprocessed images ``(N, 3, H, W)`` float32 as
    the model sees them): QDQ format, per-channel INT8 weights, activation ranges measured on the calibration
    images, only Conv/Gemm/MatMul quantised (pooling, GeM and the BNNeck stay float). ``dynamic``: weights INT8,
    activations quantised at run time; simple, but ConvInteger kernels are slow and this loses accuracy badly
    on conv nets (kept for comparison).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method == "dynamic":
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
        return Path(out)
    if method != "static":
        raise ValueError(f"INT8 method must be 'static' or 'dynamic', got {method!r}")
    if calibration is None or len(calibration) == 0:
        raise ValueError("static INT8 quantisation needs calibration images (N, 3, H, W)")

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray, batch: int = 32) -> None:
            self.batches = iter([x[i : i + batch] for i in range(0, len(x), batch)])

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"images": np.ascontiguousarray(b, dtype=np.float32)}

    quantize_static(
        str(onnx_path),
        str(out),
        Reader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "Gemm", "MatMul"],
        calibrate_method=CalibrationMethod.MinMax,
    )
    return Path(out)


def calibration_batch(checkpoint: str | Path, images: list[ImageLike]) -> np.ndarray:
    """The checkpoint's test-time preprocessing applied to ``images``: calibration input for INT8."""
    from reid.data import build_transforms
    from reid.images import to_rgb_array

    _, meta = load_checkpoint(checkpoint)
    t = build_transforms(
        {"input_size": list(meta.input_size), "mean": list(meta.mean), "std": list(meta.std)}, train=False
    )
    return np.stack([t(to_rgb_array(im)).numpy() for im in images]).astype(np.float32)


def compare_exports(
    checkpoint: str | Path, torchscript: str | Path, onnx_path: str | Path, images: list[ImageLike]
) -> dict[str, float]:
    """Max absolute difference of the raw embeddings of PyTorch vs TorchScript and vs ONNX Runtime."""
    import onnxruntime as ort

    emb = Embedder.from_checkpoint(checkpoint, device="cpu")
    x = emb.preprocess(images)
    with torch.inference_mode():
        ref = emb.model(x).numpy()
        ts = torch.jit.load(str(torchscript))(x).numpy()
    onx = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()}
    )[0]
    return {"torchscript": float(np.abs(ts - ref).max()), "onnx": float(np.abs(onx - ref).max())}
