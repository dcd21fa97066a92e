"""Loading the pretrained model and tokenizer with the snapshot's labels; no Temporal here."""

from typing import Any

from durabert.shared.errors import configuration_error


def load_model_and_tokenizer(source: str, model_name: str, label_names: list[str]) -> tuple[Any, Any]:
    """Load the tokenizer and a sequence-classification model with the snapshot's labels.

    Args:
        source: Local folder or hub id to load.
        model_name: The name the request gave (for error messages).
        label_names: The snapshot's label names; a label's index is its id.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ApplicationError: ``ConfigurationError`` when the model cannot be loaded or its
            classification head has a different number of labels.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise configuration_error(
            f"config.model_name: cannot load {model_name!r}: it is not a local model folder (absolute, or "
            f"relative to the artifact root) and not reachable as a hub id ({type(exc).__name__}: {exc})"
        ) from None
    head = [name for name in (config.architectures or []) if name.endswith("ForSequenceClassification")]
    if head and config.num_labels != len(label_names):
        raise configuration_error(
            f"config.model_name: {model_name!r} has a classification head with {config.num_labels} labels "
            f"but the snapshot has {len(label_names)} ({label_names}); use a base model or a matching "
            "snapshot"
        )
    id2label = dict(enumerate(label_names))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            ignore_mismatched_sizes=False,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        message = str(exc)
        if "size mismatch" in message or "mismatch" in message.lower():
            raise configuration_error(
                f"config.model_name: {model_name!r} does not fit {len(label_names)} labels: {message[:300]}"
            ) from None
        raise configuration_error(f"config.model_name: cannot load {model_name!r}: {message[:300]}") from None
    return model, tokenizer
