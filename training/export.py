"""Export an embedding checkpoint to TorchScript and ONNX (and INT8 ONNX for CPU), and check they agree.

Exported graphs take a normalised float batch ``(N, 3, H, W)`` and return the raw ``(N, D)`` embedding (the
same as the PyTorch model in eval mode); L2 normalisation stays outside, as in ``Embedder``. The ONNX export
and ``OnnxEmbedder`` live in ``reid.onnx_embedder`` (the services run the body model with them, and services
never import training); they are re-exported here.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from reid.embedder import Embedder
from reid.images import ImageLike
from reid.models import load_checkpoint
from reid.onnx_embedder import OnnxEmbedder, export_onnx

__all__ = [
    "DEFAULT_INT8_EXCLUDE",
    "INT8_EXCLUDE_PRESETS",
    "OnnxEmbedder",
    "calibration_batch",
    "compare_exports",
    "export_int8",
    "export_onnx",
    "export_torchscript",
    "held_out_split",
    "int8_card",
    "int8_exclusions",
    "quantize_onnx_int8",
    "requantised_at_load",
    "stamp_int8",
]

logger = logging.getLogger(__name__)


def export_torchscript(checkpoint: str | Path, out: str | Path) -> Path:
    model, meta = load_checkpoint(checkpoint)
    h, w = meta.input_size
    traced = torch.jit.trace(model.eval(), torch.randn(2, 3, h, w), check_trace=True)
    traced.save(str(out))
    return Path(out)


# What the INT8 options were chosen on: the body model shipped then (MobileNetV2, 192x96), quantised with calibration
# images of its 377 training identities and compared on the 50 identities its trainer held out (validation);
# the cuhk03-np test split only reports (benchmarks/int8_speed.py prints both, and models/body/README.md
# the table of what was tried).
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul", "Clip", "Relu", "Add")
# Named node sets that stay float (``int8_exclusions``); node names of the graph are accepted as well.
INT8_EXCLUDE_PRESETS = ("first_conv", "early", "depthwise", "head")
DEFAULT_INT8_EXCLUDE = ("early",)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("qdq", "qoperator")


def int8_exclusions(onnx_path: str | Path, exclude: Sequence[str] = DEFAULT_INT8_EXCLUDE) -> list[str]:
    """Names of the nodes that :func:`quantize_onnx_int8` keeps in float for ``exclude``.

    Each item is a node name of the graph or a preset: ``first_conv`` (the Conv that reads the image),
    ``early`` (the Convs after it that still work at its output resolution: MobileNetV2's first inverted
    residual block and the next block's expansion), ``depthwise`` (every grouped Conv), ``head`` (the
    MatMul/Gemm nodes after the last Conv: the embedding projection). An activation (Clip/Relu) that alone
    follows an excluded Conv is excluded with it: ONNX Runtime would otherwise quantise the Conv's output anyway.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    unknown = [e for e in exclude if e not in INT8_EXCLUDE_PRESETS and e not in names]
    if unknown:
        raise ValueError(
            f"INT8 exclusions {unknown} are neither presets ({', '.join(INT8_EXCLUDE_PRESETS)}) nor nodes of "
            f"{onnx_path}"
        )
    hw = {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[2:])
        for v in model.graph.value_info
        if len(v.type.tensor_type.shape.dim) == 4
    }
    convs = [n for n in nodes if n.op_type == "Conv"]
    graph_inputs = {i.name for i in model.graph.input}
    chosen: list[str] = []
    for item in exclude:
        if item in names:
            chosen.append(item)
        elif item == "first_conv":
            chosen += [n.name for n in convs if n.input[0] in graph_inputs][:1]
        elif item == "early":
            first = next((n for n in convs if n.input[0] in graph_inputs), None)
            size = hw.get(first.output[0]) if first is not None else None
            chosen += [n.name for n in convs if n is not first and size and hw.get(n.output[0]) == size]
        elif item == "depthwise":
            chosen += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        elif item == "head":
            last = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=-1)
            chosen += [n.name for n in nodes[last + 1 :] if n.op_type in ("MatMul", "Gemm")]
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for name in list(chosen):
        node = next(n for n in nodes if n.name == name)
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type in ("Clip", "Relu"):
            chosen.append(after[0].name)
    return list(dict.fromkeys(chosen))


def requantised_at_load(int8_path: str | Path, names: Sequence[str]) -> list[str]:
    """The nodes among ``names`` (kept float in the file) whose weights ONNX Runtime quantises anyway when it
    loads ``int8_path``.

    Its load-time WeightBiasQuantization gives a float Conv/Gemm that reads a DequantizeLinear and feeds a
    QuantizeLinear (an excluded node between quantised neighbours) per-tensor INT8 weights, which wrecks
    BN-folded filters (validation rank-1 80 -> 2 % with the shipped model's most sensitive 1x1 conv excluded
    alone). Checked on the graph ONNX Runtime actually runs (basic optimisations, where that pass lives), not
    by copying its rule (which, measured, spares some grouped convs and not others).
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(d) / "optimised.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(opts.optimized_model_filepath)
    producer = {o: n for n in model.graph.node for o in n.output}
    wanted = set(names)
    return [
        n.name
        for n in model.graph.node
        if n.name in wanted
        and n.op_type in ("Conv", "Gemm", "MatMul")
        and len(n.input) > 1
        and getattr(producer.get(n.input[1]), "op_type", None) == "DequantizeLinear"
    ]


def quantize_onnx_int8(
    onnx_path: str | Path,
    out: str | Path,
    calibration: np.ndarray | None = None,
    method: str = "static",
    *,
    calibrate: str = "percentile",
    percentile: float = 99.99,
    per_channel: bool = True,
    quant_format: str = "qdq",
    symmetric_activations: bool = False,
    reduce_range: bool = True,
    op_types: Sequence[str] = INT8_OP_TYPES,
    exclude: Sequence[str] = DEFAULT_INT8_EXCLUDE,
) -> Path:
    """INT8 ONNX model for CPU inference with ONNX Runtime; the settings are stored in its metadata
    (``reid_int8``, JSON).

    ``static`` (default; needs ``calibration``: a few hundred preprocessed *training* images ``(N, 3, H, W)``
    float32 as the model sees them): INT8 weights, uint8 activations with ranges measured on the calibration
    images. The defaults are what kept validation accuracy on the shipped body model (see the module comment):

    - ``per_channel`` weights: per-tensor scales wreck MobileNetV2 (BN-folded depthwise filters differ by orders
      of magnitude between channels; validation rank-1 80 -> 4 %).
    - ``op_types`` with Clip/Relu: the activation is folded into its Conv's output range ([0, 6] for ReLU6);
      quantising Conv outputs before the clip spent the 8 bits on values the clip throws away (80 -> 64 %).
    - ``calibrate="percentile"`` (99.99th percentile of each tensor's absolute values): MinMax ranges follow
      rare outliers; ``entropy`` (KL divergence over 2048 histogram bins; minutes of calibration) did worse.
    - ``exclude=("early",)``: the Convs at the first conv's output resolution stay float (see
      :func:`int8_exclusions`); one at a time they were the most sensitive layers (the 16-channel linear
      bottleneck between them carries the largest quantisation error), and they are a small part of the work.
    - ``quant_format="qdq"`` (QuantizeLinear/DequantizeLinear pairs, fused by ONNX Runtime) or ``"qoperator"``
      (QLinearConv etc. in the file); ``symmetric_activations`` (int8, zero point 0) lost accuracy here.
    - ``reduce_range`` (7-bit weights): on x86 CPUs without VNNI (AVX2 or AVX-512 alone) ONNX Runtime's u8 x s8
      kernel (VPMADDUBSW) saturates its 16-bit pair sums, and the model runs wherever it is copied. Measured on
      the shipped body model on an AVX2 EPYC (64 calibration images, 20 validation identities): cosine to fp32
      0.953 mean / 0.655 worst with 8-bit weights, 0.983 / 0.906 with 7-bit; mAP 83.7 % and 83.4 % (fp32 84.6 %).

    ``dynamic``: per-tensor INT8 weights, activations quantised at run time (ConvInteger); kept for comparison,
    it loses nearly everything on this conv net.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    settings: dict = {"method": method}
    if method == "dynamic":
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
        _stamp(out, settings)
        return Path(out)
    if method != "static":
        raise ValueError(f"INT8 method must be 'static' or 'dynamic', got {method!r}")
    if calibration is None or len(calibration) == 0:
        raise ValueError("static INT8 quantisation needs calibration images (N, 3, H, W)")
    if calibrate not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate must be one of {', '.join(CALIBRATION_METHODS)}, got {calibrate!r}")
    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {', '.join(QUANT_FORMATS)}, got {quant_format!r}")
    excluded = int8_exclusions(onnx_path, exclude)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "ranges.json"
        _calibrate(onnx_path, calibration, methods[calibrate], percentile, op_types, cache)
        quantize_static(
            str(onnx_path),
            str(out),
            None,  # the ranges come from the cache just written
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=excluded,
            calibrate_method=methods[calibrate],
            reduce_range=bool(reduce_range),
            extra_options={"ActivationSymmetric": bool(symmetric_activations)},
            calibration_cache_path=str(cache),
        )
    requantised = requantised_at_load(out, excluded)
    if requantised:
        logger.warning(
            "INT8: %s sit between quantised tensors and ONNX Runtime quantises their weights per tensor when "
            "it loads the graph (WeightBiasQuantization): they are not float at run time; exclude a neighbour "
            "too",
            ", ".join(requantised),
        )
    settings.update(
        calibrate=calibrate,
        percentile=float(percentile) if calibrate == "percentile" else None,
        calibration_images=len(calibration),
        per_channel=bool(per_channel),
        quant_format=quant_format,
        symmetric_activations=bool(symmetric_activations),
        reduce_range=bool(reduce_range),
        op_types=list(op_types),
        exclude=list(exclude),
        float_nodes=excluded,
    )
    _stamp(out, settings)
    return Path(out)


def _calibrate(
    onnx_path: str | Path, x: np.ndarray, method, percentile: float, op_types: Sequence[str], cache: Path
) -> None:
    """Activation ranges of ``onnx_path`` over the calibration images ``x``, saved as an onnxruntime
    calibration cache at ``cache`` (what ``quantize_static`` reads instead of calibrating itself).

    Calibrated here, 32 images per call, because onnxruntime's calibrators keep every intermediate tensor of
    a call in memory (its histogram methods 20+ GB for 1,024 crops of this model: killed by the OOM killer)
    and stack a call's batches into one array (so batches must be equal). Entropy gets 2048 histogram bins
    searched for 256 uint8 levels: ``quantize_static``'s own entropy keeps 128 bins and 128 levels, whose only
    candidate threshold is the maximum, i.e. MinMax (measured identical).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    class One(CalibrationDataReader):
        def __init__(self, batch: np.ndarray) -> None:
            self.batch: np.ndarray | None = np.ascontiguousarray(batch, dtype=np.float32)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b, self.batch = self.batch, None
            return None if b is None else {"images": b}

    options = {
        CalibrationMethod.Percentile: {"percentile": float(percentile)},
        CalibrationMethod.Entropy: {"num_bins": 2048, "num_quantized_bins": 256},
    }.get(method, {})
    with tempfile.TemporaryDirectory() as d:
        calibrator = create_calibrator(
            Path(onnx_path),
            list(op_types),
            augmented_model_path=str(Path(d) / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        for i in range(0, len(x), 32):
            calibrator.collect_data(One(x[i : i + 32]))
        save_tensors_data(calibrator.compute_data(), cache)


def _stamp(path: str | Path, settings: dict) -> None:
    """Store how an INT8 graph was made in its metadata (``reid_int8``), for its card and for OnnxEmbedder."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "reid_int8", json.dumps(settings, sort_keys=True)
    onnx.save(proto, str(path))


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


def held_out_split(config: dict, data_root: str | Path | None = None):
    """The identities a checkpoint's training config held out, and the ones it trained on.

    Returns ``(train, query, gallery, every)`` record lists: the training identities' images (labelled and
    ``extra_train`` views: calibration material), the validation identities' trainer protocol (one labelled
    query per camera, the other labelled images gallery) and every image of theirs (labelled and extra views,
    what ``reid-calibrate`` calibrates a card on), or None when the config held out nothing. ``data_root`` replaces the
    config's ``data.root`` (relative roots are relative to where training ran); ``extra_train`` folders are
    looked for beside it when they are not where the config says.
    """
    from reid.data import holdout_from_config
    from reid.data.readers import read_extra_train, read_market_folder

    d = config.get("data") or {}
    if not d.get("val_identities"):
        return None
    root = Path(data_root or d["root"])
    extra = []
    for folder in d.get("extra_train") or []:
        p = Path(folder)
        extra += read_extra_train(p if p.exists() else root.parent / p.name)
    train = read_market_folder(root / "bounding_box_train", "train")
    kept, val = holdout_from_config(train, d, extra)
    held = {r.pid for r in val.query}
    return kept, val.query, val.gallery, [r for r in train + extra if r.pid in held]


def _onnx_embed(path: str | Path, emb: Embedder, images: list[ImageLike], batch: int = 64) -> np.ndarray:
    """L2-normalised embeddings of ``images`` through the ONNX file at ``path`` (the checkpoint's preprocessing)."""
    import onnxruntime as ort

    from reid.embedder import l2_normalize

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [
        sess.run(None, {"images": emb.preprocess(images[i : i + batch], offset=i).numpy()})[0]
        for i in range(0, len(images), batch)
    ]
    return l2_normalize(np.concatenate(out))


def int8_card(
    checkpoint: str | Path,
    int8_path: str | Path,
    fp32_path: str | Path,
    query: Sequence,
    gallery: Sequence,
    every: Sequence = (),
    data: str = "",
    far: float = 0.01,
) -> dict:
    """What an INT8 graph does on validation identities, beside its fp32 graph: rank-1/mAP of both on
    ``query``/``gallery`` (records of identities the checkpoint never trained on), and on ``every`` image of
    those identities (default: query + gallery) the cosine of the INT8 to the fp32 vectors and an open-set
    decision calibrated on the INT8 vectors (as ``reid-calibrate`` makes the checkpoint's card on fp32)."""
    from reid.metrics import compute_distance_matrix, evaluate_rank
    from reid.metrics.open_set_decision import calibrate_with_cohort

    emb = Embedder.from_checkpoint(checkpoint, device="cpu")
    records = list(query) + list(gallery)
    every = list(every) or records
    pids, cams = np.array([r.pid for r in records]), np.array([r.camid for r in records])
    n = len(query)
    result: dict = {"data": data, "queries": n, "gallery": len(gallery), "images": len(every)}
    vectors = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        v = _onnx_embed(path, emb, [r.path for r in records])
        r = evaluate_rank(
            compute_distance_matrix(v[:n], v[n:], "cosine"), pids[:n], pids[n:], cams[:n], cams[n:]
        )
        result[name] = {"rank1": float(r.rank1), "mAP": float(r.mAP)}
        vectors[name] = _onnx_embed(path, emb, [r.path for r in every])
    cos = (vectors["int8"] * vectors["fp32"]).sum(1)
    result["cosine_to_fp32"] = {"mean": float(cos.mean()), "min": float(cos.min())}
    cal, cohort = calibrate_with_cohort(vectors["int8"], np.array([r.pid for r in every]), far)
    decision = {**cal.as_dict(), "data": data, "cohort": np.asarray(cohort, np.float32).tolist(), "seed": 0}
    return {"validation": result, "decision": decision}


def stamp_int8(int8_path: str | Path, base_model_id: str, card: dict | None) -> str:
    """Give an INT8 graph its identity: ``reid_model_id`` = ``<base_model_id>-int8-<12 hex digits of the
    quantised graph>`` (two INT8 variants of one checkpoint are two embedding spaces), ``reid_base_model_id``,
    and its card (``reid_card``, JSON) when one was measured. Returns the model_id."""
    import hashlib

    import onnx

    proto = onnx.load(str(int8_path))
    digest = hashlib.sha256(proto.graph.SerializeToString()).hexdigest()[:12]
    model_id = f"{base_model_id}-int8-{digest}"
    # a quantised copy of a cached fp32 export inherits its keys: the cache key must not travel along
    keep = [p for p in proto.metadata_props if p.key not in ("reid_model_id", "reid_cache_key", "reid_card")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    props = {"reid_model_id": model_id, "reid_base_model_id": base_model_id}
    if card is not None:
        props["reid_card"] = json.dumps({"model_id": model_id, **card}, sort_keys=True)
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(int8_path))
    return model_id


def export_int8(
    checkpoint: str | Path,
    fp32_path: str | Path,
    out: str | Path,
    calibration_images: list[ImageLike],
    validation: tuple[Sequence, Sequence, Sequence] | None = None,
    data: str = "",
    **options,
) -> tuple[Path, str, dict | None]:
    """Quantise the checkpoint's fp32 ONNX export ``fp32_path`` to ``out`` (:func:`quantize_onnx_int8` with
    ``options``), calibrated on ``calibration_images`` (training identities only), then measure its card on
    ``validation`` = (query, gallery, every) records of held-out identities when given, and stamp its model_id and
    card (:func:`stamp_int8`). Returns (path, model_id, card)."""
    _, meta = load_checkpoint(checkpoint)
    calib = calibration_batch(checkpoint, calibration_images) if options.get("method") != "dynamic" else None
    path = quantize_onnx_int8(fp32_path, out, calib, **options)
    card = None
    if validation is not None:
        card = int8_card(checkpoint, path, fp32_path, *validation, data=data)
    return path, stamp_int8(path, meta.model_id, card), card
