"""The classifier: one long-lived ONNX Runtime session per active model, checked against its card.

:func:`load_classifier` is also the model validator: a folder becomes a :class:`Classifier` only when its
card parses, its ONNX graph loads, the graph's input and output agree with the card (names, dtype,
``3 x size x size`` with a dynamic batch, one output per label), and a warm-up run on a batch of two
gives logits of the expected shape. Anything else raises :class:`~service.core.errors.InvalidModel`.

Variants: a card may list other network files of the same version (``variants``, e.g. an int8 QDQ
quantization, ``model.int8.onnx``). On the CPU execution provider the classifier loads the card's CPU
default variant when ``cpu_variant`` is ``auto``, the named variant when it is ``int8``, and ``model.onnx``
when it is ``fp32``; on CUDA it always loads ``model.onnx``. A variant is checked like the fp32 network,
plus its sha256 against the card. A variant that is missing, altered or broken is an :class:`InvalidModel`
when it was asked for by name (``int8``); under ``auto`` the fp32 network is loaded instead, with a warning.

Providers: ``cpu``, ``cuda`` or ``auto``. ``auto`` uses CUDA only when onnxruntime-gpu can really create a
CUDA session (it lists ``CUDAExecutionProvider`` as available even on machines without a GPU or without
the CUDA libraries); the session's :meth:`~onnxruntime.InferenceSession.get_providers` is the truth.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.errors import InvalidModel
from service.core.hashing import file_sha256
from service.core.modelcard import CARD_FILENAME, ONNX_FILENAME, ModelCard, ModelVariant
from service.core.taxonomy import TaxonTree

logger = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
CPU_VARIANT_CHOICES = ("auto", "fp32", "int8")
FP32 = "fp32"
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"

# Whether a CUDA session could be created in this process (None: not tried yet). Trying costs a failed
# library load and an error line from ONNX Runtime, so it is done once per process.
_cuda_works: bool | None = None
_cuda_lock = threading.Lock()


class ProviderUnavailable(RuntimeError):
    """``providers=cuda`` was asked for but no CUDA session can be created."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created (from :class:`service.settings.Settings`)."""

    providers: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # Which network file to run on the CPU: the card's CPU default variant (auto), model.onnx (fp32) or a
    # named variant (int8). The library default is fp32, the reference (evaluation, retraining gates);
    # the service's setting (POLLINID_CPU_VARIANT) defaults to auto.
    cpu_variant: str = FP32

    def __post_init__(self) -> None:
        if self.providers.lower() not in PROVIDER_CHOICES:
            raise ValueError(f"unknown providers setting {self.providers!r}; known: {list(PROVIDER_CHOICES)}")
        if self.cpu_variant.lower() not in CPU_VARIANT_CHOICES:
            raise ValueError(f"unknown cpu_variant setting {self.cpu_variant!r}; known: {list(CPU_VARIANT_CHOICES)}")

    @classmethod
    def from_settings(cls, settings: Any) -> RuntimeOptions:
        return cls(providers=settings.providers, intra_op_threads=settings.intra_op_threads,
                   inter_op_threads=settings.inter_op_threads,
                   cpu_variant=getattr(settings, "cpu_variant", "auto"))


@dataclass(eq=False)
class Classifier:
    """A loaded, validated model: its card, taxonomy and ONNX Runtime session.

    ``session.run`` is thread-safe; a classifier is shared by every request while it is active and stays
    alive as long as a request still holds it, so a swap never cuts a request short.
    """

    name: str
    version: str
    path: Path
    card: ModelCard
    session: ort.InferenceSession
    provider: str  # "cuda" or "cpu"
    input_name: str
    output_name: str
    tree: TaxonTree
    variant: str = FP32  # which network file runs: "fp32" (model.onnx) or a card variant's key ("int8")
    loaded_at: float = field(default_factory=time.time)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # per-model memo (e.g. taxon views)

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    @property
    def temperature(self) -> float:
        return float(self.card.calibration.temperature)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for a float32 batch of shape (n, 3, size, size)."""
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: ``softmax(logits / T)`` along the last axis."""
        return softmax(np.asarray(logits, dtype=np.float64) / self.temperature)

    def energy(self, logits: np.ndarray) -> np.ndarray:
        """Energy score ``T * logsumexp(logits / T)``; low values mean "unlike the training classes"."""
        t = self.temperature
        return t * logsumexp(np.asarray(logits, dtype=np.float64) / t)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "provider": self.provider,
                "variant": self.variant, "path": str(self.path), "labels": self.card.num_classes,
                "input_size": self.card.input.size}


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax along the last axis."""
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def logsumexp(x: np.ndarray) -> np.ndarray:
    """Numerically stable log-sum-exp along the last axis."""
    m = np.max(x, axis=-1, keepdims=True)
    return np.squeeze(m, -1) + np.log(np.sum(np.exp(x - m), axis=-1))


def _session_options(opts: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = max(0, int(opts.intra_op_threads))
    so.inter_op_num_threads = max(0, int(opts.inter_op_threads))
    # Do not burn the cores between batches: the decoding threads need them.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def create_session(model: bytes | str, opts: RuntimeOptions) -> tuple[ort.InferenceSession, str]:
    """Create an ONNX Runtime session with the providers ``opts`` asks for.

    Returns:
        The session and the provider it really uses: ``"cuda"`` or ``"cpu"``.

    Raises:
        ProviderUnavailable: ``providers="cuda"`` and no CUDA session could be created.
        ValueError: an unknown provider choice.
        Exception: whatever ONNX Runtime raises for a model it cannot load.
    """
    global _cuda_works
    choice = opts.providers.lower()
    if choice not in PROVIDER_CHOICES:
        raise ValueError(f"unknown providers setting {opts.providers!r}; known: {list(PROVIDER_CHOICES)}")
    so = _session_options(opts)
    if choice == "cpu" or _CUDA not in ort.get_available_providers() or (choice == "auto" and
                                                                        _cuda_works is False):
        if choice == "cuda":
            raise ProviderUnavailable("providers=cuda but this onnxruntime has no CUDA execution provider")
        return ort.InferenceSession(model, so, providers=[_CPU]), "cpu"
    with _cuda_lock:
        quiet = choice == "auto" and _cuda_works is None
        if quiet:  # a failed probe logs an error from ONNX Runtime; on a CPU machine that is expected
            ort.set_default_logger_severity(4)
        try:
            session = ort.InferenceSession(model, so, providers=[_CUDA, _CPU])
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
        works = _CUDA in session.get_providers()
        if _cuda_works is None:
            _cuda_works = works
            logger.info("ONNX Runtime CUDA execution provider %s",
                        "works: inference runs on the GPU" if works else
                        "is listed but cannot create a session (no GPU or CUDA libraries): using the CPU")
    if not works and choice == "cuda":
        raise ProviderUnavailable("providers=cuda but ONNX Runtime could not create a CUDA session "
                                  "(no GPU, or the CUDA/cuDNN libraries it needs are missing)")
    return session, "cuda" if works else "cpu"


def _is_dynamic(dim: Any) -> bool:
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and dim <= 0)


def _check_graph(session: ort.InferenceSession, card: ModelCard) -> tuple[str, str]:
    """Check the graph's input and output against the card; return their names."""
    spec = card.input
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidModel(f"the network must have exactly one input; it has {len(inputs)}: "
                           f"{[i.name for i in inputs]}")
    inp = inputs[0]
    if inp.name != spec.input_name:
        raise InvalidModel(f"the card names the input {spec.input_name!r} but the network's input is "
                           f"{inp.name!r}")
    if inp.type != "tensor(float)":
        raise InvalidModel(f"the input must be float32 (tensor(float)); it is {inp.type}")
    shape = list(inp.shape)
    if len(shape) != 4:
        raise InvalidModel(f"the input must be NCHW (4 dimensions); its shape is {shape}")
    if not _is_dynamic(shape[0]):
        raise InvalidModel(f"the input's batch dimension must be dynamic; it is fixed at {shape[0]}")
    if shape[1] != 3:
        raise InvalidModel(f"the input must have 3 channels (RGB); its shape is {shape}")
    for dim in shape[2:]:
        if not _is_dynamic(dim) and dim != spec.size:
            raise InvalidModel(f"the card says the input is {spec.size}x{spec.size} but the network's input "
                               f"shape is {shape}")
    outputs = {o.name: o for o in session.get_outputs()}
    if spec.output_name in outputs:
        out = outputs[spec.output_name]
    elif len(outputs) == 1:
        out = next(iter(outputs.values()))
        logger.warning("card names the output %r; using the network's only output %r", spec.output_name,
                       out.name)
    else:
        raise InvalidModel(f"the card names the output {spec.output_name!r}; the network's outputs are "
                           f"{sorted(outputs)}")
    if out.type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        raise InvalidModel(f"the output must be floating point logits; it is {out.type}")
    oshape = list(out.shape)
    if len(oshape) != 2:
        raise InvalidModel(f"the output must be (batch, labels); its shape is {oshape}")
    if not _is_dynamic(oshape[1]) and oshape[1] != card.num_classes:
        raise InvalidModel(f"the network has {oshape[1]} outputs but the card lists {card.num_classes} "
                           "labels")
    return inp.name, out.name


def _cpu_certain(opts: RuntimeOptions) -> bool:
    """Whether ``create_session`` will give a CPU session without trying CUDA."""
    choice = opts.providers.lower()
    return choice == "cpu" or _CUDA not in ort.get_available_providers() or (choice == "auto" and
                                                                           _cuda_works is False)


def _wanted_variant(card: ModelCard, opts: RuntimeOptions) -> tuple[str, ModelVariant] | None:
    """The variant to run on the CPU under ``opts.cpu_variant`` (None: ``model.onnx``)."""
    choice = opts.cpu_variant.lower()
    if choice == FP32:
        return None
    if choice == "auto":
        return card.cpu_default_variant()
    variant = card.variants.get(choice)
    if variant is None:
        logger.info("model %s/%s has no %s variant: running %s", card.name, card.version, choice, ONNX_FILENAME)
        return None
    return choice, variant


@dataclass
class _Opened:
    session: ort.InferenceSession
    provider: str
    input_name: str
    output_name: str
    variant: str


def _open(path: Path, card: ModelCard, opts: RuntimeOptions, where: str, variant: str = FP32) -> _Opened:
    """Create, check and warm up a session on one network file of a version."""
    try:
        session, provider = create_session(str(path), opts)
    except ProviderUnavailable:
        raise
    except Exception as exc:
        raise InvalidModel(f"{where}: ONNX Runtime cannot load {path.name}: {exc}") from exc
    try:
        input_name, output_name = _check_graph(session, card)
    except InvalidModel as exc:
        raise InvalidModel(f"{where}: {path.name}: {exc.message}") from exc
    # Warm up with a batch of two: allocates buffers, proves the batch dimension is dynamic, and checks
    # the real output shape (some wrong shapes pass the static checks).
    size = card.input.size
    try:
        warm = session.run([output_name], {input_name: np.zeros((2, 3, size, size), dtype=np.float32)})[0]
    except Exception as exc:
        raise InvalidModel(f"{where}: the network fails on a {size}x{size} batch of two: {exc}") from exc
    if tuple(np.shape(warm)) != (2, card.num_classes):
        raise InvalidModel(f"{where}: the network returns shape {tuple(np.shape(warm))} for a batch of two; "
                           f"expected (2, {card.num_classes}) for the card's {card.num_classes} labels")
    if not np.all(np.isfinite(warm)):
        raise InvalidModel(f"{where}: the network returns non-finite logits on a blank input")
    return _Opened(session, provider, input_name, output_name, variant)


def _open_variant(folder: Path, card: ModelCard, key: str, variant: ModelVariant, opts: RuntimeOptions
                  ) -> _Opened | None:
    """A CPU session on a variant's file; None (with a warning) when it is unfit and was not asked for by name."""
    where = str(folder)
    path = folder / variant.file
    try:
        if not path.is_file():
            raise InvalidModel(f"{where}: the card lists the {key} variant {variant.file} but the file is missing")
        if file_sha256(path) != variant.sha256:
            raise InvalidModel(f"{where}: {variant.file} does not match the card's sha256 for the {key} variant "
                               "(altered or partly copied)")
        return _open(path, card, replace(opts, providers="cpu"), where, key)
    except InvalidModel as exc:
        if opts.cpu_variant.lower() == key:
            raise
        logger.warning("%s; running %s instead", exc.message, ONNX_FILENAME)
        return None


def load_classifier(folder: Path, opts: RuntimeOptions, *, expected: tuple[str, str] | None = None
                    ) -> Classifier:
    """Load, validate and warm up the model in ``folder`` (``model.onnx`` + ``model.json``).

    On the CPU, the card's variant chosen by ``opts.cpu_variant`` (see the module's docstring) runs instead
    of ``model.onnx``; ``model.onnx`` is loaded and checked whenever the provider may be CUDA.

    Args:
        folder: a model version folder, ``<models_dir>/<name>/<version>``.
        opts: providers, thread counts and the CPU variant choice.
        expected: the (name, version) the folder is registered as; the card must say the same.

    Raises:
        InvalidModel: anything that makes the model unfit to serve, with the reason.
        ProviderUnavailable: ``providers=cuda`` on a machine where CUDA does not work.
    """
    t0 = time.perf_counter()
    onnx_path = folder / ONNX_FILENAME
    card_path = folder / CARD_FILENAME
    where = str(folder)
    if not onnx_path.is_file():
        raise InvalidModel(f"{where}: no {ONNX_FILENAME}")
    if not card_path.is_file():
        raise InvalidModel(f"{where}: no {CARD_FILENAME} (the model card)")
    try:
        card = ModelCard.load(card_path)
    except Exception as exc:
        raise InvalidModel(f"{where}: the model card does not parse: {exc}") from exc
    if expected is not None and (card.name, card.version) != expected:
        raise InvalidModel(f"{where}: the card says {card.name}/{card.version} but the folder is "
                           f"{expected[0]}/{expected[1]}")
    wanted = _wanted_variant(card, opts)
    opened: _Opened | None = None
    if wanted is not None and _cpu_certain(opts):
        opened = _open_variant(folder, card, *wanted, opts)
        wanted = None  # tried
    if opened is None:
        opened = _open(onnx_path, card, opts, where)
        if opened.provider == "cpu" and wanted is not None:  # auto found no working CUDA
            opened = _open_variant(folder, card, *wanted, opts) or opened
    variant = opened.variant
    clf = Classifier(name=card.name, version=card.version, path=folder, card=card, session=opened.session,
                     provider=opened.provider, input_name=opened.input_name, output_name=opened.output_name,
                     tree=TaxonTree.from_card(card), variant=variant)
    size = card.input.size
    logger.info("loaded model %s/%s (%s) from %s on %s (%d labels, input %dx%d, threads intra=%s inter=%s) "
                "in %.0f ms", card.name, card.version, variant, folder, opened.provider, card.num_classes, size,
                size, opts.intra_op_threads or os.cpu_count(), opts.inter_op_threads,
                (time.perf_counter() - t0) * 1000)
    return clf
