"""A checkpoint on ONNX Runtime: export to ONNX, a checked on-disk cache of the export, and ``OnnxEmbedder``.

Exported graphs take a normalised float batch ``(N, 3, H, W)`` and return the raw ``(N, D)`` embedding (the
same as the PyTorch model in eval mode). Preprocessing, flip averaging and L2 normalisation are ``Embedder``'s,
so an ``OnnxEmbedder`` of a checkpoint has the PyTorch ``Embedder``'s ``model_id`` (the weights are the same),
its decision card and its ``-flip`` rule; only the forward pass runs elsewhere.

The cache (``OnnxEmbedder.from_checkpoint``): ``<cache_dir>/<model_id>-<key>.onnx``, where ``key`` hashes what
the graph depends on besides the weights (architecture and its config, input size, opset, exporter version,
torch version). It is written atomically (temporary file + rename, so concurrent processes never read half a
file) and checked at every load: its stored model_id and key, its input/output shapes, and its output on a
fixed input against the PyTorch model's. A stale or corrupt file is rebuilt, with a warning saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from reid.decision_card import card_from_checkpoint_extra, flip_model_id
from reid.embedder import Embedder, l2_normalize
from reid.errors import CheckpointError

logger = logging.getLogger(__name__)

OPSET = 17
# bump when the export itself changes: old cache files are then rebuilt (2: denormal weights flushed to zero)
EXPORT_VERSION = 2
# ONNX Runtime vs PyTorch on the cache check's fixed input: |onnx - torch| <= TOLERANCE * max|torch|
TOLERANCE = 1e-4


def default_threads() -> int:
    """ONNX Runtime intra-op threads unless told otherwise: ``min(2, cores)`` (services share the CPU with
    FAISS, the HTTP server and other processes; more threads barely help a batch of one)."""
    return max(1, min(2, os.cpu_count() or 1))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/reid/onnx`` (``~/.cache/reid/onnx``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reid" / "onnx"


def flush_denormals(proto) -> int:
    """Set the subnormal float32 initializers of an ONNX ``proto`` to zero, in place; returns how many.

    Folding a BatchNorm whose scale has decayed to ~1e-39 into its conv leaves subnormal weights (the shipped
    body model has 650, 101 of them in the first conv). x86 multiplies subnormals in microcode: on a Xeon with
    AVX-512 the first conv alone took 27 of 46 ms per crop in ONNX Runtime. Their contribution (< 1e-37) is
    below float32 resolution of any activation, so zero is the same model.
    """
    from onnx import numpy_helper

    tiny = np.finfo(np.float32).tiny
    flushed = 0
    for init in proto.graph.initializer:
        if init.data_type != 1:  # onnx.TensorProto.FLOAT
            continue
        a = numpy_helper.to_array(init)
        sub = (a != 0) & (np.abs(a) < tiny)
        if sub.any():
            flushed += int(sub.sum())
            init.CopyFrom(numpy_helper.from_array(np.where(sub, np.float32(0), a), init.name))
    return flushed


def _export(model, meta, out: str | Path, opset: int = OPSET, flush: bool = True) -> Path:
    import onnx
    import torch

    h, w = meta.input_size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))  # never touches the global RNG
    with warnings.catch_warnings():
        # the TorchScript-based exporter needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (x,),
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
    if not flush:
        return Path(out)
    proto = onnx.load(str(out))
    flushed = flush_denormals(proto)
    if flushed:
        logger.debug("%s: %d subnormal weights set to zero", meta.model_id, flushed)
        onnx.save(proto, str(out))
    return Path(out)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET, flush: bool = True) -> Path:
    """Export ``checkpoint`` to the ONNX file ``out`` (input ``images``, output ``embeddings``, dynamic batch).
    ``flush=False`` keeps subnormal weights as exported (only to measure what they cost; see
    :func:`flush_denormals`)."""
    from reid.models import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    return _export(model, meta, out, opset, flush)


def cache_key(meta, opset: int = OPSET) -> str:
    """12 hex digits over what the exported graph depends on besides the weights (which ``model_id`` covers)."""
    import torch

    blob = json.dumps(
        {
            "model_id": meta.model_id,
            "arch": meta.arch,
            "model_cfg": meta.model_cfg,
            "input_size": list(meta.input_size),
            "opset": opset,
            "export": EXPORT_VERSION,
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _session(path: str | Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or default_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_input(meta) -> np.ndarray:
    h, w = meta.input_size
    return np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)


def _problem(path: Path, model, meta, key: str) -> str | None:
    """Why the cached file at ``path`` cannot be used for ``model`` (None: it can)."""
    import torch

    try:
        sess = _session(path, threads=1)
        props = sess.get_modelmeta().custom_metadata_map
        if props.get("reid_model_id") != meta.model_id or props.get("reid_cache_key") != key:
            return (
                f"it was exported for {props.get('reid_model_id')!r} with key {props.get('reid_cache_key')!r}"
            )
        if [i.name for i in sess.get_inputs()] != ["images"]:
            return "its input is not 'images'"
        x = _check_input(meta)
        got = sess.run(None, {"images": x})[0]
    except Exception as e:  # onnxruntime raises its own exception types for unreadable/invalid files
        return f"it does not load or run ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x)).float().numpy()
    if got.shape != ref.shape:
        return f"it returns {got.shape}, the checkpoint {ref.shape}"
    diff = float(np.abs(got - ref).max())
    if not diff <= TOLERANCE * max(1.0, float(np.abs(ref).max())):
        return f"its output differs from the checkpoint's by up to {diff:.3g}"
    return None


def cached_onnx(model, meta, cache_dir: str | os.PathLike | None = None, opset: int = OPSET) -> Path:
    """The checked ONNX export of ``model`` (loaded from a checkpoint: ``meta`` carries its ``model_id``) in
    ``cache_dir`` (default :func:`default_cache_dir`), exported first if absent, stale or corrupt."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(meta, opset)
    path = folder / f"{meta.model_id}-{key}.onnx"
    if path.is_file():
        why = _problem(path, model, meta, key)
        if why is None:
            logger.debug("ONNX cache hit: %s", path)
            return path
        logger.warning("rebuilding the ONNX cache %s: %s", path, why)
    else:
        logger.info("exporting %s to ONNX: %s", meta.model_id, path)
    import onnx

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:  # e.g. a read-only home in a container: export where we can, say so
        fallback = Path(tempfile.gettempdir()) / f"reid-onnx-{os.getuid() if hasattr(os, 'getuid') else 0}"
        if folder == fallback:
            raise CheckpointError(f"cannot write the ONNX export of {meta.model_id} in {folder} ({e})") from e
        logger.warning("cannot write the ONNX cache in %s (%s): using %s", folder, e.strerror or e, fallback)
        return cached_onnx(model, meta, fallback, opset)
    os.close(fd)
    try:
        _export(model, meta, tmp, opset)
        proto = onnx.load(tmp)
        for k, v in {"reid_model_id": meta.model_id, "reid_cache_key": key}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, tmp)
        why = _problem(Path(tmp), model, meta, key)
        if why is not None:
            raise CheckpointError(f"{meta.model_id}: the ONNX export is unusable: {why}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OnnxEmbedder(Embedder):
    """``Embedder`` whose forward pass runs in ONNX Runtime (CPU): same preprocessing, flip rule, model_id and
    decision card as the PyTorch ``Embedder`` of the checkpoint.

    ``OnnxEmbedder.from_checkpoint(path)`` exports and caches the graph (see the module docstring);
    ``OnnxEmbedder(onnx_path, checkpoint)`` runs a given file. An INT8 graph's vectors are another embedding
    space: one written by ``training.export`` carries its own ``model_id`` (``<model_id>-int8-<digest of the
    quantised graph>``, so two INT8 variants never share an index) and its own card (accuracy measured on the
    checkpoint's validation identities and a decision calibrated on its INT8 vectors) in its metadata; it must
    have been made from this checkpoint. Another INT8 file (quantised but not stamped, or whose name contains
    ``int8``) gets ``<model_id>-int8`` and no decision (the fp32 card's threshold was calibrated on other
    vectors). ``threads``: ONNX Runtime
    intra-op threads (default :func:`default_threads`; inter-op 1, sequential execution). The torch model is
    not kept.
    """

    runtime = "onnx"

    def __init__(
        self,
        onnx_path: str | Path,
        checkpoint: str | Path | None = None,
        threads: int | None = None,
        flip: bool = False,
        *,
        loaded: tuple | None = None,
    ) -> None:
        if loaded is None:
            if checkpoint is None:
                raise ValueError("OnnxEmbedder needs the checkpoint (or loaded=(model, meta))")
            from reid.models import load_checkpoint

            loaded = load_checkpoint(checkpoint)
        model, meta = loaded
        if not Path(onnx_path).is_file():
            raise CheckpointError(f"{onnx_path}: ONNX file does not exist")
        self.onnx_path = Path(onnx_path)
        self.threads = int(threads or default_threads())
        self.session = _session(onnx_path, self.threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.int8_card: dict | None = None  # what training.export measured for an INT8 graph
        self._id_suffix = ""
        if "reid_base_model_id" in props:  # stamped by training.export.stamp_int8
            base = props["reid_base_model_id"]
            if base != meta.model_id:
                raise CheckpointError(
                    f"{onnx_path}: this INT8 graph was quantised from {base!r}, not from {meta.model_id!r}"
                )
            self._id_suffix = props.get("reid_model_id", base + "-int8")[len(base) :]
            self.int8_card = json.loads(props["reid_card"]) if "reid_card" in props else None
        elif "reid_int8" in props or "int8" in self.onnx_path.name:
            logger.warning(
                "%s: an INT8 graph without its own model_id (training.export.stamp_int8 gives one): it gets "
                "%s-int8, which every such variant of this checkpoint shares, and no decision",
                onnx_path,
                meta.model_id,
            )
            self._id_suffix = "-int8"
        super().__init__(model, meta, device="cpu", flip=flip)
        self.model = None  # the forward pass is the session's
        self._mean_np = self._mean.numpy()
        self._std_np = self._std.numpy()

    @Embedder.flip.setter
    def flip(self, value: bool) -> None:
        Embedder.flip.fset(self, value)
        self.model_id = flip_model_id(self.meta.model_id + self._id_suffix, self._flip)
        if self._id_suffix:
            # the checkpoint's card decides for fp32 vectors; an INT8 graph's own card (plain vectors only)
            card = None if self._flip else (self.int8_card or {}).get("decision")
            self.decision = card_from_checkpoint_extra({"decision": card}) if card else None

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device: str | None = None,
        flip: bool = False,
        *,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> OnnxEmbedder:
        """The checkpoint's cached ONNX export (made, or remade, when needed) on ONNX Runtime's CPU provider."""
        from reid.models import load_checkpoint

        if device not in (None, "cpu"):
            raise ValueError(f"OnnxEmbedder runs on the CPU, not {device!r}")
        model, meta = load_checkpoint(path)
        onnx_path = cached_onnx(model, meta, cache_dir)
        return cls(onnx_path, threads=threads, flip=flip, loaded=(model, meta))

    def embed_resized(self, x: np.ndarray, flip: bool | None = None) -> np.ndarray:
        # NumPy around the session: the hot path never enters torch (whose intra-op threads would contend with
        # ONNX Runtime's); the same float32 arithmetic as Embedder.preprocess and torch's normalize
        x = x.transpose(0, 3, 1, 2).astype(np.float32)
        x = np.ascontiguousarray((x - self._mean_np) / self._std_np)
        f = self.session.run(None, {"images": x})[0]
        if self.flip if flip is None else flip:
            f = f + self.session.run(None, {"images": np.ascontiguousarray(x[..., ::-1])})[0]
        return l2_normalize(f)
