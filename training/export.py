"""Export an embedding checkpoint to TorchScript and ONNX (and INT8 ONNX for CPU), and check they agree.

Exported graphs take a normalised float batch ``(N, 3, H, W)`` and return the raw ``(N, D)`` embedding (the
same as the PyTorch model in eval mode); L2 normalisation stays outside, as in ``Embedder``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from reid.embedder import Embedder
from reid.errors import CheckpointError
from reid.images import ImageLike
from reid.models import load_checkpoint

logger = logging.getLogger(__name__)


def export_torchscript(checkpoint: str | Path, out: str | Path) -> Path:
    model, meta = load_checkpoint(checkpoint)
    h, w = meta.input_size
    traced = torch.jit.trace(model.eval(), torch.randn(2, 3, h, w), check_trace=True)
    traced.save(str(out))
    return Path(out)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    model, meta = load_checkpoint(checkpoint)
    h, w = meta.input_size
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # the TorchScript-based exporter needs no onnxscript
        torch.onnx.export(
            model.eval(),
            (torch.randn(1, 3, h, w),),
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
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


class OnnxEmbedder(Embedder):
    """``Embedder`` whose forward pass runs in ONNX Runtime (CPU): same preprocessing, same output."""

    def __init__(self, onnx_path: str | Path, checkpoint: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        model, meta = load_checkpoint(checkpoint)
        super().__init__(model, meta, device="cpu")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not Path(onnx_path).is_file():
            raise CheckpointError(f"{onnx_path}: ONNX file does not exist")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.model_id = meta.model_id + ("-int8" if "int8" in Path(onnx_path).name else "")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": x.numpy()})[0])


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
