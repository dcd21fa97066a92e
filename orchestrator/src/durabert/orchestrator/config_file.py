"""Reading and validating what a person hands the CLI, before Temporal is contacted.

A bad config file or inference request is refused here with one line per bad field, so a
typo never reaches a worker, never becomes a failed workflow, and never costs a retry.
"""

import json
import sys
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from durabert.orchestrator.run_ids import check_run_id, generate_run_id
from durabert.shared.errors import describe_validation_error
from durabert.shared.models import BertFineTuneConfig, BertInferenceRequest

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
"""File name endings ``durabert train`` accepts."""


class UserInputError(ValueError):
    """Input from the command line or a file is not acceptable; the message says where and why."""


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses a key given twice (PyYAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping, without validating its fields.

    Args:
        path: A ``.yaml``, ``.yml`` or ``.json`` file.

    Returns:
        The top-level mapping.

    Raises:
        UserInputError: The file is missing, unreadable, malformed or not a mapping.
    """
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise UserInputError(f"{path}: a config file must end in {', '.join(CONFIG_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: cannot read the config file: {exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, _StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise UserInputError(f"{path}: the config must be a mapping of field names to values, not {kind}")
    return data


def load_config(path: Path, run_id: str | None = None, *, continue_run: bool = False) -> BertFineTuneConfig:
    """Load a training config and settle its run id: flag, then file, then a fresh one.

    Args:
        path: A ``.yaml``, ``.yml`` or ``.json`` file of ``BertFineTuneConfig`` fields.
        run_id: The ``--run-id`` flag, which wins over the file's ``run_id``.
        continue_run: The ``--continue`` flag: sets ``continue_run`` (a file may set it too).

    Returns:
        The validated config with ``run_id`` always set.

    Raises:
        UserInputError: Each bad field on its own line, as ``FILE: field: why (got value)``.
    """
    if run_id is not None and (reason := check_run_id(run_id)) is not None:
        raise UserInputError(f"--run-id: {reason} (got {run_id!r})")
    data = read_config_mapping(path)
    try:
        config = BertFineTuneConfig.model_validate(data)
    except ValidationError as exc:
        lines = describe_validation_error(exc).splitlines()
        raise UserInputError("\n".join(f"{path}: {line}" for line in lines)) from None
    update: dict[str, Any] = {"run_id": run_id or config.run_id or generate_run_id()}
    if continue_run:
        update["continue_run"] = True
    return config.model_copy(update=update)


def read_texts(texts: Sequence[str], file: Path | None, stdin: TextIO | None = None) -> list[str]:
    """Collect the texts to classify: the arguments, or one per non-blank line of a file.

    Args:
        texts: Texts given on the command line.
        file: A UTF-8 file with one text per line; ``-`` reads standard input.
        stdin: Stream used for ``-`` (standard input when None).

    Returns:
        The texts, in order.

    Raises:
        UserInputError: Both or neither source given, or the file cannot be read.
    """
    if texts and file is not None:
        raise UserInputError("give texts as arguments or --file, not both")
    if file is None:
        if not texts:
            raise UserInputError("give at least one text, or --file FILE with one text per line")
        return list(texts)
    try:
        is_stdin = str(file) == "-"
        content = (stdin or sys.stdin).read() if is_stdin else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"--file {file}: cannot read it: {exc}") from None
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise UserInputError(f"--file {file}: no texts in it (one text per line)")
    return lines


def build_inference_request(run_id: str, texts: list[str], **options: Any) -> BertInferenceRequest:
    """Validate an inference request the way the workflow will, so a bad one is never sent.

    Args:
        run_id: The run whose model to use.
        texts: The texts to classify.
        **options: Further ``BertInferenceRequest`` fields (``max_seq_length``, ``timeout_seconds``).

    Returns:
        The validated request.

    Raises:
        UserInputError: Each bad field on its own line (``texts: List should have at most 256 items ...``).
    """
    try:
        return BertInferenceRequest.model_validate({"run_id": run_id, "texts": texts, **options})
    except ValidationError as exc:
        raise UserInputError(describe_validation_error(exc)) from None


RequestModel = TypeVar("RequestModel", bound=BaseModel)


def load_run_request(model: type[RequestModel], path: Path, run_id: str) -> RequestModel:
    """Validate a config file for a command on a finished run (``predict``, ``eval``) before Temporal.

    Args:
        model: The request model the file's fields belong to (unknown keys are refused).
        path: A ``.yaml``, ``.yml`` or ``.json`` file.
        run_id: The command's ``RUN_ID``, which wins over the file's.

    Returns:
        The validated request.

    Raises:
        UserInputError: Each bad field on its own line, as ``FILE: field: why (got value)``.
    """
    if (reason := check_run_id(run_id)) is not None:
        raise UserInputError(f"RUN_ID: {reason} (got {run_id!r})")
    data = read_config_mapping(path)
    try:
        return model.model_validate(data | {"run_id": run_id})
    except ValidationError as exc:
        lines = describe_validation_error(exc).splitlines()
        raise UserInputError("\n".join(f"{path}: {line}" for line in lines)) from None
