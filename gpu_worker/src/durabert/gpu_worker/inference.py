"""Inference with finished models kept warm in a small LRU cache (no Temporal here).

The original design loaded the model for every call; here a model is loaded once per
(run, model version, device) and reused until the cache evicts it. The version is the
run manifest's modification time, so a retrained run's new model replaces the old one.

With an object-store artifact root, each call first compares the store's completion marker of
the model with the one in the worker's local copy (one small read) and downloads the model
when it is missing or newer; the download changes the manifest's modification time, so the
new model replaces the warm one as above.

Forward passes are :func:`classify_texts`; the inference activity runs them through the
:class:`~durabert.gpu_worker.batching.InferenceBatcher`, which gathers concurrent requests for the
same model into shared passes.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from durabert.gpu_worker.batching import Prediction
from durabert.gpu_worker.device import Device
from durabert.gpu_worker.gpu_memory import InferenceMemoryPolicy
from durabert.gpu_worker.mirror import RunMirror
from durabert.gpu_worker.model_folder import model_version
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import not_found
from durabert.shared.logging import get_logger
from durabert.shared.models import BertInferenceRequest, BertInferenceResult

log = get_logger(__name__)

CacheKey = tuple[str, int, Device]
"""(run id, model version, device)."""


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, ready for forward passes."""

    model: Any
    """The ``...ForSequenceClassification`` model in eval mode."""
    tokenizer: Any
    """Its tokenizer."""
    label_names: list[str]
    """Class names by id."""
    device: Device
    """Where the model's weights live."""
    key: CacheKey
    """The cache key it was loaded under: requests for equal keys may share forward passes."""
    memory: InferenceMemoryPolicy | None = None
    """The worker's GPU-memory policy, applied to every pass."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """One pass at a time per model: online inference and batch scoring share warm models, and a
    fast tokenizer refuses use from two threads at once ("Already borrowed")."""


class ModelCache:
    """Least-recently-used cache of loaded models, safe to use from several threads."""

    def __init__(
        self,
        store: ArtifactStore,
        capacity: int,
        mirror: RunMirror | None = None,
        memory: InferenceMemoryPolicy | None = None,
    ) -> None:
        """Create an empty cache.

        Args:
            store: The artifact store holding ``runs/<run_id>/model`` (the local copy with an
                object-store root).
            capacity: Most models kept in memory.
            mirror: The object store behind ``store``, if it is one.
            memory: The GPU-memory policy of inference (caps the process before a first CUDA load).
        """
        self.store = store
        self.capacity = capacity
        self.memory = memory
        self.mirror = mirror
        """The object store models are downloaded from (None with a local artifact root)."""
        self._sync_lock = threading.Lock()
        self.loads = 0
        """Models loaded from disk so far (tests and benchmarks read it)."""
        self._models: OrderedDict[CacheKey, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, run_id: str, device: Device) -> CacheKey:
        """Build the cache key of a run's current final model.

        Args:
            run_id: The run.
            device: The device to run on.

        Returns:
            The key.

        Raises:
            ApplicationError: ``ArtifactNotFoundError`` when the run has no finished model.
        """
        if self.mirror is not None:
            with self._sync_lock:  # one download of a model, however many calls wait for it
                self.mirror.pull_model(run_id)
        try:
            version = model_version(self.store.model_dir(run_id))
        except FileNotFoundError:
            raise not_found(
                f"run_id: run {run_id!r} has no finished model at {self.store.model_dir(run_id)} "
                "(is it still training, or was it never trained on this artifact store?)"
            ) from None
        return (run_id, version, device)

    def get(self, run_id: str, device: Device) -> LoadedModel:
        """Return the warm model of a run, loading it on first use.

        Args:
            run_id: The run.
            device: The device to run on.

        Returns:
            The loaded model.
        """
        key = self.key(run_id, device)
        with self._lock:  # loads are rare; holding the lock makes each model load exactly once
            cached = self._models.get(key)
            if cached is not None:
                self._models.move_to_end(key)
                return cached
            loaded = self._load(key)
            self._models[key] = loaded
            for stale in [k for k in self._models if k[0] == run_id and k != key]:
                del self._models[stale]  # an older version of the same run
            while len(self._models) > self.capacity:
                evicted, _ = self._models.popitem(last=False)
                log.info("evicted model from inference cache", run_id=evicted[0])
            return loaded

    def _load(self, key: CacheKey) -> LoadedModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        run_id, _, device = key
        if self.memory is not None:
            self.memory.before_inference(device)
        folder = self.store.model_dir(run_id)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        id2label = model.config.id2label
        labels = [str(id2label[index]) for index in range(model.config.num_labels)]
        self.loads += 1
        log.info("loaded model for inference", run_id=run_id, device=device, folder=str(folder))
        return LoadedModel(model, tokenizer, labels, device, key, self.memory)


def classify_texts(loaded: LoadedModel, texts: list[str], max_seq_length: int) -> list[Prediction]:
    """Classify texts in one forward pass, under the model's lock and the GPU-memory policy (blocking).

    An out-of-memory pass is retried once after releasing the cache; while training shares the
    device, the cache is released after every pass (see :mod:`~durabert.gpu_worker.gpu_memory`).

    Args:
        loaded: The warm model.
        texts: The pass's texts, from one or several requests.
        max_seq_length: Tokens per text after truncation.

    Returns:
        The predicted class and its softmax probability per text, in order.
    """
    with loaded.lock:
        memory = loaded.memory
        if memory is None:
            return _forward(loaded, texts, max_seq_length)
        try:
            return memory.guarded(loaded.device, lambda: _forward(loaded, texts, max_seq_length))
        finally:
            memory.after_batch(loaded.device)


def _forward(loaded: LoadedModel, texts: list[str], max_seq_length: int) -> list[Prediction]:
    import torch

    with torch.inference_mode():
        inputs = loaded.tokenizer(
            texts, truncation=True, max_length=max_seq_length, padding=True, return_tensors="pt"
        ).to(loaded.device)
        best = loaded.model(**inputs).logits.float().softmax(dim=-1).max(dim=-1)
        pairs = zip(best.indices.tolist(), best.values.tolist(), strict=True)
    return [Prediction(int(label), float(confidence)) for label, confidence in pairs]


def inference_result(
    request: BertInferenceRequest, loaded: LoadedModel, predictions: list[Prediction]
) -> BertInferenceResult:
    """Build the answer of one request from its texts' predictions.

    Args:
        request: The request.
        loaded: The model that answered it.
        predictions: One per text, in order.

    Returns:
        Predicted ids, names and confidences.
    """
    labels = [prediction.label for prediction in predictions]
    return BertInferenceResult(
        run_id=request.run_id,
        texts=list(request.texts),
        predicted_labels=labels,
        predicted_label_names=[loaded.label_names[label] for label in labels],
        confidences=[prediction.confidence for prediction in predictions],
        label_names=loaded.label_names,
        device=loaded.device,
    )
