"""Complete-checkpoint bookkeeping: numeric order, half-written folders skipped and removed, rotation."""

from pathlib import Path

from durabert.gpu_worker import checkpoints


def make(directory: Path, step: int, complete: bool = True) -> Path:
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        checkpoints.mark_complete(path, step, attempt=1)
    return path


def test_newest_is_numeric_not_string_order(tmp_path):
    for step in (500, 1000, 50):
        make(tmp_path, step)
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [50, 500, 1000]
    assert checkpoints.newest_complete(tmp_path).step == 1000


def test_half_written_checkpoint_is_skipped_and_removed(tmp_path):
    make(tmp_path, 4)
    half = make(tmp_path, 8, complete=False)
    chosen = checkpoints.choose_resume_checkpoint(tmp_path, requested=None)
    assert chosen is not None
    assert chosen.step == 4
    assert not half.exists()


def test_requested_checkpoint_wins_only_when_complete_and_newer(tmp_path):
    make(tmp_path / "run", 4)
    newer = make(tmp_path / "elsewhere", 12)
    incomplete = make(tmp_path / "other", 20, complete=False)
    assert checkpoints.choose_resume_checkpoint(tmp_path / "run", newer).step == 12
    assert checkpoints.choose_resume_checkpoint(tmp_path / "run", incomplete).step == 4
    older = make(tmp_path / "old", 2)
    assert checkpoints.choose_resume_checkpoint(tmp_path / "run", older).step == 4


def test_nothing_to_resume_from(tmp_path):
    assert checkpoints.choose_resume_checkpoint(tmp_path / "missing", None) is None


def test_rotation_keeps_newest_complete_and_never_touches_incomplete(tmp_path):
    for step in (2, 4, 6):
        make(tmp_path, step)
    pending = make(tmp_path, 8, complete=False)
    deleted = checkpoints.rotate(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["checkpoint-2"]
    assert pending.exists()
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [4, 6, 8]


def test_unmark_makes_a_folder_incomplete_before_it_is_rewritten(tmp_path):
    path = make(tmp_path, 4)
    checkpoints.unmark(path)
    checkpoints.unmark(tmp_path / "checkpoint-99")  # missing folders are fine
    assert not checkpoints.is_complete(path)
    assert checkpoints.newest_complete(tmp_path) is None
