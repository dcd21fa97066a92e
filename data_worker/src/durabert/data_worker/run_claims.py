"""The ``claim_run`` activity: a thin Temporal shell around :mod:`durabert.shared.run_record`.

It runs on the data worker because that worker already reaches the artifact store and is
cheap to reach: a reused run id is refused in the workflow's first seconds, before a snapshot
is taken or a GPU is held. With an object-store root the record is claimed in the store, where
the GPU workers read it (never in the data worker's local copy, which no other worker sees).
"""

from temporalio import activity

from durabert.shared import names
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import RunClaimRequest, RunClaimResult
from durabert.shared.object_store import ObjectStore, open_object_store
from durabert.shared.run_record import claim_run
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)


class RunClaimActivities:
    """The run-claim activity, bound to the worker's artifact store."""

    def __init__(self, settings: DurabertSettings) -> None:
        """Bind the activity to the artifact store named by the settings.

        Args:
            settings: The worker's settings (artifact root, store retry budget).
        """
        objects = open_object_store(settings.artifact_root, retry_seconds=settings.store.retry_seconds)
        self._store: ArtifactStore | ObjectStore = (
            objects if objects is not None else ArtifactStore(settings.artifact_dir)
        )

    @activity.defn(name=names.CLAIM_RUN)
    def claim_run(self, request: RunClaimRequest) -> RunClaimResult:
        """Make ``runs/<run_id>`` the requesting workflow chain's, or refuse the id.

        Args:
            request: The run id, the claiming chain, its config and ``continue_run``.

        Returns:
            The claim (with the earlier chain and the config changes when it continued a run).

        Raises:
            ApplicationError: ``RunIdInUseError`` or ``ConfigurationError`` (never retried), or a
                retryable ``ArtifactStoreError``.
        """
        bind_run_id(request.run_id)
        try:
            result = claim_run(self._store, request)
            log.info(
                "run claimed",
                chain_id=request.chain_id,
                continued_from_chain=result.continued_from_chain,
                config_changes=sorted(result.config_changes),
            )
            return result
        finally:
            bind_run_id(None)
