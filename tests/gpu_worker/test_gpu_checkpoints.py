"""Checkpoint bookkeeping: numeric order, half-written or altered folders skipped, publishing, rotation."""

from pathlib import Path

from durabert.gpu_worker import checkpoints


def make(directory: Path, step: int, complete: bool = True) -> Path:
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(f"weights of step {step}".encode())
    if complete:
        checkpoints.mark_complete(path, step, {"seq": 1, "attempt": 1})
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


def test_same_size_other_content_is_not_complete_and_resume_falls_back(tmp_path):
    make(tmp_path, 4)
    newest = make(tmp_path, 8)
    # Another writer's file of the same size (the race the size-only check accepted).
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes().replace(b"8", b"9"))
    assert checkpoints.is_complete(newest)  # sizes still match ...
    assert not checkpoints.is_complete(newest, content=True)  # ... the content does not
    assert "SHA-256" in checkpoints.damage(newest, content=True)
    chosen = checkpoints.choose_resume_checkpoint(tmp_path, requested=None)
    assert chosen.step == 4
    assert not newest.exists()


def test_marker_names_the_writer(tmp_path):
    path = make(tmp_path, 4)
    assert checkpoints.writer_of(path) == {"seq": 1, "attempt": 1}


def test_publish_moves_a_whole_folder_and_keeps_an_existing_complete_one(tmp_path):
    staged = make(tmp_path / "staging", 4)
    published = checkpoints.publish(staged, tmp_path / "checkpoints")
    assert published == tmp_path / "checkpoints" / "checkpoint-4"
    assert checkpoints.is_complete(published, content=True)
    assert not staged.exists()
    again = make(tmp_path / "staging", 4)
    (again / "model.safetensors").write_bytes(b"another writer")
    checkpoints.mark_complete(again, 4, {"seq": 2, "attempt": 2})
    assert checkpoints.publish(again, tmp_path / "checkpoints") is None
    assert checkpoints.writer_of(published) == {"seq": 1, "attempt": 1}
    assert not again.exists()


def test_the_marker_describes_the_files_for_an_upload_only_when_it_lists_all_of_them(tmp_path):
    folder = make(tmp_path, 8)
    described = checkpoints.described_files(folder)
    assert described is not None
    files = [child for child in folder.iterdir() if child.name != checkpoints.COMPLETE_MARKER]
    assert {name: e.size for name, e in described.items()} == {f.name: f.stat().st_size for f in files}
    (folder / "extra_state").mkdir()  # something the marker does not list: describe afresh
    assert checkpoints.described_files(folder) is None
