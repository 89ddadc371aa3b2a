"""dlib's face ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as an ONNX graph run by ONNX Runtime.

Why: the ``dlib-bin`` wheel is built without BLAS, so its network takes ~120 ms per 150x150 chip on this
project's machines (batching does not help), and its Python binding holds the GIL for all of it, so a second
thread or core cannot help either. The same weights in ONNX Runtime take ~10 ms per chip on one thread and
release the GIL.

The graph is built here, from the weights in dlib's own model file: :func:`read_dlib_resnet` reads dlib's
serialization format (``dlib/serialize.h``, ``dlib/dnn/core.h``, ``dlib/dnn/layers.h``) for exactly this
network (``anet_type`` of dlib's ``tools/python/src/face_recognition.cpp``), checking every layer's type and
shape against that definition; :func:`build_onnx` writes the same computation as ONNX operators. dlib's layers
map one to one, with three points of care:

- ``input_rgb_image_sized``: ``(pixel - channel mean) / 256`` in RGB order (done inside the graph, which takes
  the uint8 chips as they come from ``dlib.get_face_chip``);
- strided convolutions and pools have no padding (dlib's default padding is ``size // 2`` only at stride 1);
- ``add_prev`` adds tensors of different shapes by treating missing elements as zeros (``tt::add``): the
  down-sampling blocks add 32 -> 64 channels and 3x3 to a 4x4 shortcut, so the graph pads with zeros first.

``affine`` layers (frozen batch norm) are folded into the preceding convolution in float64. The result equals
dlib's descriptor to float32 rounding (3.9e-7 at most on 64 LFW chips whose descriptors reach 0.51;
``DlibFaceEmbedder`` compares the two on a fixed chip when it is built and runs dlib's network if they differ),
so the embedding keeps its ``model_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reid.errors import CheckpointError

OPSET = 17
CHIP = 150  # dlib's input_rgb_image_sized<150>
# dlib's descriptor vs ours on the check chip: |ours - dlib| <= TOLERANCE * max|dlib| (float32 rounding in a
# different summation order is ~1e-6 of the scale)
TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------- architecture
@dataclass
class Layer:
    """One layer of dlib's network in input-to-output order. ``kind``: ``con``, ``affine``, ``relu``,
    ``max_pool``, ``avg_pool`` (``size`` 0: over everything), ``fc``, ``tag``, ``skip`` or ``add_prev``
    (``tag`` names the tag layer a skip or an add refers to)."""

    kind: str
    filters: int = 0
    size: int = 0
    stride: int = 1
    tag: int = 0
    params: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def padding(self) -> int:
        # dlib's con_/max_pool_/avg_pool_ default: size // 2 at stride 1, none otherwise
        return self.size // 2 if self.stride == 1 else 0


def _block(n: int, stride: int) -> list[Layer]:
    # block<N, BN, stride> = BN<con<N,3,3,1,1, relu<BN<con<N,3,3,stride,stride, SUBNET>>>>>
    return [
        Layer("con", n, 3, stride),
        Layer("affine"),
        Layer("relu"),
        Layer("con", n, 3, 1),
        Layer("affine"),
    ]


def _ares(n: int) -> list[Layer]:
    # relu<add_prev1<block<N, affine, 1, tag1<SUBNET>>>>
    return [Layer("tag", tag=1), *_block(n, 1), Layer("add_prev", tag=1), Layer("relu")]


def _ares_down(n: int) -> list[Layer]:
    # relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N, affine, 2, tag1<SUBNET>>>>>>>
    return [
        Layer("tag", tag=1),
        *_block(n, 2),
        Layer("tag", tag=2),
        Layer("skip", tag=1),
        Layer("avg_pool", size=2, stride=2),
        Layer("add_prev", tag=2),
        Layer("relu"),
    ]


def architecture() -> list[Layer]:
    """dlib's ``anet_type`` (face_recognition.cpp), input to output, without the input and loss layers."""
    layers = [Layer("con", 32, 7, 2), Layer("affine"), Layer("relu"), Layer("max_pool", size=3, stride=2)]
    for _ in range(3):  # alevel4
        layers += _ares(32)
    for n, repeats in ((64, 3), (128, 2), (256, 2)):  # alevel3, alevel2, alevel1
        layers += _ares_down(n)
        for _ in range(repeats):
            layers += _ares(n)
    layers += _ares_down(256)  # alevel0
    layers += [Layer("avg_pool", size=0, stride=1), Layer("fc", 128)]
    return layers


# ------------------------------------------------------------------------------------- dlib's file format
class _Reader:
    """dlib's serialization primitives (dlib/serialize.h), over the bytes of one file."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = data, 0, where

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.where}: not dlib's face ResNet as expected ({what} at byte {self.pos})"
        )

    def int(self) -> int:
        # a size byte (low 4 bits: how many bytes follow; bit 7: negative), then little-endian magnitude
        if self.pos >= len(self.data):
            raise self.fail("file ends early")
        head = self.data[self.pos]
        n = head & 0x0F
        if n > 8:
            raise self.fail(f"bad integer header {head:#x}")
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def string(self) -> str:
        n = self.int()
        if not 0 <= n <= 256:
            raise self.fail(f"string of length {n}")
        s = self.data[self.pos : self.pos + n].decode("latin-1")
        self.pos += n
        return s

    def float(self) -> float:
        # float_details: int64 mantissa and int16 exponent
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0**exponent

    def bool(self) -> bool:
        ch = self.data[self.pos : self.pos + 1]
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool {ch!r}")
        self.pos += 1
        return ch == b"1"

    def tensor(self) -> np.ndarray:
        # version 2, num_samples, k, nr, nc, then raw little-endian float32 (dlib/cuda/tensor.h)
        if self.int() != 2:
            raise self.fail("tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.data):
            raise self.fail("tensor past the end of the file")
        arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).reshape(shape)
        self.pos = end
        return arr

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise self.fail("alias_tensor version")
        return tuple(self.int() for _ in range(4))


def _details(r: _Reader, layer: Layer) -> None:
    """One layer's details (``serialize(item.details)``) into ``layer.params``, checked against ``layer``."""
    name = r.string()
    if layer.kind == "con":
        if name not in ("con_4", "con_5", "con_6"):
            raise r.fail(f"expected a convolution, found {name!r}")
        params = r.tensor().reshape(-1)
        filters, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        wshape, bshape = r.alias(), r.alias()
        for _ in range(4):  # learning rate and weight decay multipliers
            r.float()
        use_bias = r.bool() if name in ("con_5", "con_6") else True
        if name == "con_6" and r.bool():
            raise r.fail("a convolution with a fused relu")
        want = (
            layer.filters,
            layer.size,
            layer.size,
            layer.stride,
            layer.stride,
            layer.padding,
            layer.padding,
        )
        if (filters, nr, nc, sy, sx, py, px) != want:
            raise r.fail(f"convolution {(filters, nr, nc, sy, sx, py, px)} instead of {want}")
        nw = int(np.prod(wshape))
        if wshape[0] != filters or wshape[2:] != (nr, nc) or params.size != nw + filters * use_bias:
            raise r.fail(f"convolution weights {wshape}, biases {bshape}, {params.size} parameters")
        layer.params["w"] = params[:nw].reshape(wshape)
        layer.params["b"] = params[nw:] if use_bias else np.zeros(filters, np.float32)
    elif layer.kind == "affine":
        if name not in ("affine_", "affine_2"):
            raise r.fail(f"expected an affine layer, found {name!r}")
        params = r.tensor().reshape(-1)
        gshape, _ = r.alias(), r.alias()
        if r.int() != 0:  # layer_mode: CONV_MODE = 0 (one gamma and beta per channel), FC_MODE = 1
            raise r.fail("an affine layer not in CONV_MODE")
        if name == "affine_2" and r.bool():
            raise r.fail("a disabled affine layer")
        k = int(np.prod(gshape))
        if params.size != 2 * k:
            raise r.fail(f"affine layer of {params.size} parameters for {k} channels")
        layer.params["gamma"], layer.params["beta"] = params[:k], params[k:]
    elif layer.kind == "relu":
        if name not in ("relu_", "relu_2"):
            raise r.fail(f"expected relu, found {name!r}")
        if name == "relu_2" and r.bool():
            raise r.fail("a disabled relu")
    elif layer.kind in ("max_pool", "avg_pool"):
        if name != f"{layer.kind}_2":
            raise r.fail(f"expected {layer.kind}_2, found {name!r}")
        got = tuple(r.int() for _ in range(6))
        want = (layer.size, layer.size, layer.stride, layer.stride, layer.padding, layer.padding)
        if got != want:
            raise r.fail(f"{layer.kind} {got} instead of {want}")
    elif layer.kind == "add_prev":
        if name != "add_prev_":
            raise r.fail(f"expected add_prev_, found {name!r}")
    elif layer.kind == "fc":
        if name not in ("fc_2", "fc_3"):
            raise r.fail(f"expected fc, found {name!r}")
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        wshape, _ = r.alias(), r.alias()
        if r.int() != 1:  # fc_bias_mode: FC_NO_BIAS
            raise r.fail("an fc layer with a bias")
        for _ in range(4):
            r.float()
        if name == "fc_3":
            r.bool()
        if outputs != layer.filters:
            raise r.fail(f"fc with {outputs} outputs instead of {layer.filters}")
        if params.size != inputs * outputs or wshape[:2] != (inputs, outputs):
            raise r.fail(f"fc weights {wshape} with {params.size} parameters")
        layer.params["w"] = params.reshape(inputs, outputs)  # dlib's fc: output = input @ w
    else:  # tags and skips have no details
        raise r.fail(f"layer kind {layer.kind}")


def read_dlib_resnet(path: str | Path) -> tuple[np.ndarray, list[Layer]]:
    """(RGB channel means of the input layer, the layers of :func:`architecture` with their weights) from
    dlib's model file. :class:`CheckpointError` if the file is not this network."""
    r = _Reader(Path(path).read_bytes(), str(path))
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise r.fail("no loss_metric_2 header")
    r.float(), r.float()  # margin, distance threshold: training only
    layers = architecture()
    # add_layer / add_tag_layer / add_skip_layer write their version, then their sub-network, then their own
    # details: the versions of all layers come first (output to input), then the details (input to output)
    for i, layer in enumerate(reversed(layers)):
        v = r.int()
        innermost = i == len(layers) - 1
        ok = (v == 1) if layer.kind in ("tag", "skip") else (v in (2, 3) if innermost else v == 2)
        if not ok:
            raise r.fail(f"version {v} of a {layer.kind} layer")
    innermost_version = v
    if r.string() != "input_rgb_image_sized":
        raise r.fail("no input_rgb_image_sized layer")
    mean = np.array([r.float() for _ in range(3)], dtype=np.float64)
    if (r.int(), r.int()) != (CHIP, CHIP):
        raise r.fail(f"an input size other than {CHIP}x{CHIP}")
    for i, layer in enumerate(layers):
        if layer.kind in ("tag", "skip"):
            continue
        _details(r, layer)
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output disabled
            r.bool()
        for _ in range(3):  # x_grad, cached_output, params_grad (grad_final innermost): empty when saved
            r.tensor()
        if i == 0 and innermost_version == 3:
            r.int()  # _sample_expansion_factor
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left over")
    return mean, layers


# --------------------------------------------------------------------------------------------- ONNX graph
def build_onnx(mean: np.ndarray, layers: list[Layer]):
    """The network as an ``onnx.ModelProto``: input ``chips`` uint8 ``(N, 150, 150, 3)`` RGB (what
    ``dlib.get_face_chip`` returns), output ``descriptors`` float32 ``(N, 128)`` (dlib's raw descriptor)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = iter(range(10**6))

    def const(arr: np.ndarray, dtype=np.float32) -> str:
        name = f"c{next(counter)}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = f"t{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    x = node("Cast", ["chips"], to=TensorProto.FLOAT)
    x = node("Sub", [x, const(mean.reshape(1, 1, 1, 3))])
    x = node("Mul", [x, const(np.full((1,), 1 / 256))])  # a power of two: exactly dlib's "/256.0"
    x = node("Transpose", [x], perm=[0, 3, 1, 2])
    shape = (3, CHIP, CHIP)  # (channels, rows, cols), known statically: the input size is fixed
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer.kind == "con":
            w = layer.params["w"].astype(np.float64)
            b = layer.params["b"].astype(np.float64)
            if i + 1 < len(layers) and layers[i + 1].kind == "affine":  # fold the frozen batch norm
                g, beta = (layers[i + 1].params[k].astype(np.float64) for k in ("gamma", "beta"))
                w, b = w * g[:, None, None, None], b * g + beta
                i += 1
            p, s = layer.padding, layer.stride
            x = node(
                "Conv",
                [x, const(w), const(b)],
                kernel_shape=[layer.size, layer.size],
                strides=[s, s],
                pads=[p, p, p, p],
            )
            shape = (layer.filters, *((d + 2 * p - layer.size) // s + 1 for d in shape[1:]))
        elif layer.kind == "affine":  # not after a convolution (not in this network, kept for completeness)
            k = shape[0]
            x = node("Mul", [x, const(layer.params["gamma"].reshape(1, k, 1, 1))])
            x = node("Add", [x, const(layer.params["beta"].reshape(1, k, 1, 1))])
        elif layer.kind == "relu":
            x = node("Relu", [x])
        elif layer.kind in ("max_pool", "avg_pool") and layer.size:
            op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
            p, s = layer.padding, layer.stride
            x = node(op, [x], kernel_shape=[layer.size] * 2, strides=[s, s], pads=[p] * 4)
            shape = (shape[0], *((d + 2 * p - layer.size) // s + 1 for d in shape[1:]))
        elif layer.kind == "avg_pool":  # avg_pool_everything
            x = node("GlobalAveragePool", [x])
            shape = (shape[0], 1, 1)
        elif layer.kind == "tag":
            tags[layer.tag] = (x, shape)
        elif layer.kind == "skip":
            x, shape = tags[layer.tag]
        elif layer.kind == "add_prev":
            # tt::add: shapes may differ; missing elements count as zeros (channels and the bottom/right)
            other, oshape = tags[layer.tag]
            out = tuple(max(a, b) for a, b in zip(shape, oshape))
            x, other = (_pad_to(node, const, t, sh, out) for t, sh in ((x, shape), (other, oshape)))
            x = node("Add", [x, other])
            shape = out
        elif layer.kind == "fc":
            x = node("Flatten", [x], axis=1)
            x = node("MatMul", [x, const(layer.params["w"])])
        i += 1
    nodes[-1].output[0] = "descriptors"
    graph = helper.make_graph(
        nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["batch", CHIP, CHIP, 3])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["batch", layers[-1].filters])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.producer_name = "reid.face.dlib_onnx"
    return model  # ONNX Runtime checks the graph when it loads it (onnx.checker would add ~0.5 s)


def _pad_to(node, const, x: str, shape: tuple[int, int, int], out: tuple[int, int, int]) -> str:
    if shape == out:
        return x
    extra = [o - s for o, s in zip(out, shape)]
    pads = [0, 0, 0, 0, 0, *extra]  # begins (N, C, H, W) then ends: zeros after the last channel/row/col
    return node("Pad", [x, const(np.array(pads), np.int64)], mode="constant")


def check_chip() -> np.ndarray:
    """A fixed 150x150 RGB chip (smooth random texture) for comparing this graph with dlib's network."""
    import cv2

    rng = np.random.default_rng(20240229)
    small = rng.integers(0, 256, (19, 19, 3), dtype=np.uint8)
    return cv2.resize(small, (CHIP, CHIP), interpolation=cv2.INTER_CUBIC)


class DlibResnetOnnx:
    """dlib's face ResNet on ONNX Runtime: ``(N, 150, 150, 3)`` uint8 chips -> raw ``(N, 128)`` descriptors.

    ``threads``: ONNX Runtime intra-op threads (default ``reid.onnx_embedder.default_threads()``). ``run`` is
    thread-safe and releases the GIL, so several request threads embed at once.
    """

    def __init__(self, model_path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from reid.onnx_embedder import default_threads

        mean, layers = read_dlib_resnet(model_path)
        self.model = build_onnx(mean, layers)
        opts = ort.SessionOptions()
        self.threads = int(threads or default_threads())
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(
            self.model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        if chips.ndim != 4 or chips.shape[1:] != (CHIP, CHIP, 3):
            raise ValueError(f"expected (N, {CHIP}, {CHIP}, 3) uint8 chips, got {chips.shape}")
        return self._session.run(None, {"chips": np.ascontiguousarray(chips, dtype=np.uint8)})[0]

    def mismatch(self, dlib_net) -> str | None:
        """Why this graph cannot stand in for ``dlib_net`` (a ``dlib.face_recognition_model_v1``; None: it can)."""
        chip = check_chip()
        ref = np.array(dlib_net.compute_face_descriptor(chip, 0), dtype=np.float32)
        got = self(chip[None])[0]
        diff = float(np.abs(got - ref).max())
        if not diff <= TOLERANCE * float(np.abs(ref).max()):
            return f"its descriptor differs from dlib's by up to {diff:.3g} (scale {np.abs(ref).max():.3g})"
        return None
