"""Where ``make demo`` keeps its artifacts: a local folder, or (``STORE=s3``) a bucket on a local S3 API.

With ``STORE=s3`` the demo starts moto's S3 server in its own process, creates the bucket,
uploads the demo data to it, and gives every worker process the ``AWS_*`` variables and a work
folder of its own: no two workers share a folder, as on machines that share none. moto is a dev
dependency, imported only here and only for ``STORE=s3``; the orchestrator itself never needs it.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from durabert.shared.object_store import ObjectStore

StoreKind = Literal["local", "s3"]
"""``make demo STORE=...``: ``local`` (a folder, as always) or ``s3`` (a local S3 API)."""
DEMO_BUCKET: Final = "durabert-demo"
"""The bucket the S3 demo creates; artifacts go under ``artifacts/``, the data under ``data/``."""
# moto accepts any keys; these only have to be the same on every side.
_TEST_CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "durabert-demo",
    "AWS_SECRET_ACCESS_KEY": "durabert-demo-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No keys are probed from the EC2 metadata service (seconds of timeouts off a cloud machine).
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class DemoStore:
    """The artifact root the demo's workers share, and what each worker needs to reach it."""

    artifact_root: str
    """``DURABERT_ARTIFACT_ROOT``: a folder, or ``s3://durabert-demo/artifacts``."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables every worker (and this process's store client) gets: the endpoint and keys."""
    artifacts: ObjectStore | None = None
    """The store at the artifact root, for the report; None for a folder."""
    data: ObjectStore | None = None
    """The store at the data prefix, where the demo data is uploaded; None for a folder."""

    @property
    def is_remote(self) -> bool:
        """Whether the root is an object store, so each worker gets a work folder of its own."""
        return self.artifacts is not None

    def data_source(self, data_file: Path) -> str:
        """Where runs read the demo data from: the local file, or its uploaded copy in the bucket.

        Args:
            data_file: The JSONL the demo data step wrote.

        Returns:
            The path or ``s3://`` URL to give as ``data_files``.
        """
        if self.data is None:
            return str(data_file)
        self.data.write_bytes(data_file.name, data_file.read_bytes())
        return f"{self.data.url}/{data_file.name}"

    def allowed_data_roots(self) -> str | None:
        """``DURABERT_ALLOWED_DATA_ROOTS`` for the workers: the data prefix, or None (the defaults)."""
        return None if self.data is None else f'["{self.data.url}"]'

    def model_files(self, model_path: str) -> tuple[str, list[str]]:
        """Where the final model is and its files, read from the store when the root is one.

        Args:
            model_path: The result's ``model_path`` (relative to the artifact root).

        Returns:
            The model's location and its file names (empty when it is not there, or incomplete).
        """
        if self.artifacts is None:
            model_dir = Path(self.artifact_root) / model_path
            files = sorted(path.name for path in model_dir.iterdir()) if model_dir.is_dir() else []
            return str(model_dir), files
        marker = self.artifacts.read_marker(model_path)
        files = sorted({name.split("/", 1)[0] for name in marker.files}) if marker else []
        return self.artifacts.url_of(model_path), files

    def read_metrics(self, model_path: str) -> str | None:
        """The model's ``metrics.json`` as the store holds it (None for a folder, or when missing)."""
        if self.artifacts is None:
            return None
        raw = self.artifacts.read_bytes(f"{model_path}/metrics.json")
        return None if raw is None else raw.decode()


def local_store(state_dir: Path) -> DemoStore:
    """The demo's artifact folder, ``<state_dir>/artifacts``, shared by every worker (as always)."""
    return DemoStore(artifact_root=str(state_dir / "artifacts"))


@contextmanager
def s3_store() -> Iterator[DemoStore]:
    """Start a local S3 API (moto) with the demo bucket; stop it on exit.

    Yields:
        The store: ``s3://durabert-demo/artifacts``, the endpoint and keys for every worker.
    """
    # A dev dependency, imported for STORE=s3 only.
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO; the demo's narration is what should show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", **_TEST_CREDENTIALS}
        filesystem = _s3_filesystem(env)
        # moto keeps buckets per process, not per server: one may be left by an earlier start.
        filesystem.makedirs(DEMO_BUCKET, exist_ok=True)
        yield DemoStore(
            artifact_root=f"s3://{DEMO_BUCKET}/artifacts",
            env=env,
            artifacts=ObjectStore(f"s3://{DEMO_BUCKET}/artifacts", filesystem=filesystem),
            data=ObjectStore(f"s3://{DEMO_BUCKET}/data", filesystem=filesystem),
        )
    finally:
        server.stop()


def _s3_filesystem(env: dict[str, str]) -> Any:
    """An s3fs client of the demo's server, keys given directly (this process's environment is untouched)."""
    import fsspec  # s3fs is installed wherever moto is (the dev environment)

    return fsspec.filesystem(
        "s3",
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        # No region here: s3fs would send it as the bucket's LocationConstraint, which
        # us-east-1 refuses; botocore signs for us-east-1 without one.
        skip_instance_cache=True,
        use_listings_cache=False,
    )
