"""retention=none: no raw training sample in anything a run writes (scanned byte by byte)."""

import tempfile
from pathlib import Path

import pytest
import torch
from helpers.runs import TINY, run, small_synthetic
from helpers.stores import artifacts, checkpoint, client

from pipeline.data.datamodule import ContinualDataModule
from pipeline.errors import ConfigError
from pipeline.experiment import compose
from pipeline.store import Store
from pipeline.strategies import REGISTRY
from pipeline.tracking import Run


def written_bytes(store: Path, run_id: str) -> list[bytes]:
    """Every byte the run stored: its artifacts as the store serves them, and the store's own
    folder (the database, the artifact root) read directly."""
    with tempfile.TemporaryDirectory() as d:
        art = artifacts(store, run_id, Path(d))
        files = [p for p in art.rglob("*") if p.is_file()]
        assert any(p.suffix == ".ckpt" for p in files)
        blobs = [p.read_bytes() for p in files]
    return blobs + [p.read_bytes() for p in store.rglob("*") if p.is_file()]


def sample_patterns(cfg) -> list[bytes]:
    """Each task-0 training sample as stored raw (uint8) and as trained on (float32)."""
    dm = ContinualDataModule(cfg.data, scenario=cfg.scenario)
    dm.setup()
    task = dm.tasks[0]
    images = task.train.images[:100]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (task.mean, task.std))
    floats = (images.float() / 255 - mean) / std
    return [i.numpy().tobytes() for i in images] + [f.numpy().tobytes() for f in floats]


def found(patterns: list[bytes], blobs: list[bytes]) -> int:
    return sum(any(p in b for b in blobs) for p in patterns)


def test_raw_keeping_strategies_are_refused():
    keepers = sorted(n for n, cls in REGISTRY.items() if cls.keeps_raw_data)
    assert {"joint", "replay"} <= set(keepers)
    for name in keepers:
        with pytest.raises(ConfigError, match="retention=none"):
            compose("synthetic_forgetting", ["retention=none", f"strategy=[{name}]"])


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if not c.keeps_raw_data))
def test_no_raw_sample_in_any_artifact(name, tmp_path):
    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, "retention=none", f"strategy=[{name}]", *TINY)
    result = run(cfg)
    assert found(sample_patterns(cfg), written_bytes(store, result.run_id)) == 0


def test_the_scan_finds_samples_a_buffer_keeps(tmp_path):
    """Positive control: the same scan sees replay's stored samples in its checkpoints."""
    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, "strategy=[replay]", *TINY)
    result = run(cfg)
    assert found(sample_patterns(cfg), written_bytes(store, result.run_id)) > 0


def test_erasure_removes_samples_from_every_checkpoint(tmp_path, capsys):
    from pipeline.cli import main

    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, "strategy=[replay]", "strategies.replay.size=50", *TINY)
    result = run(cfg)
    where = f"paths.store={store}"

    def stored_ids(index: int) -> set[int]:
        buf = checkpoint(store, result.run_id, index)[0].strategies[0].buffer
        return set(buf.ids[buf.valid & (buf.tasks == 0)].tolist())

    victims = sorted(stored_ids(1))[:5]
    assert len(victims) == 5
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    rows = [int((dm.tasks[0].train.ids == i).nonzero()) for i in victims]
    patterns = [dm.tasks[0].train.images[r].numpy().tobytes() for r in rows]
    assert found(patterns, written_bytes(store, result.run_id)) == 5

    ids = ",".join(map(str, victims))
    assert (
        main(
            [
                "erase",
                result.run_id,
                "--task",
                "synthetic0",
                "--ids",
                ids,
                "--mode",
                "buffers",
                where,
            ]
        )
        == 0
    )
    for index in (0, 1):
        assert not stored_ids(index) & set(victims)
    assert found(patterns, written_bytes(store, result.run_id)) == 0
    info = client(store).get_run(result.run_id)
    assert info.data.metrics["retention/erased_samples"] >= 5
    history = Run.get(Store.at(store), result.run_id).read_json("erasures.json")
    assert history[-1]["ids"] == victims and sum(history[-1]["removed"].values()) >= 5

    assert main(["erase", result.run_id, "--task", "nope", "--ids", "1", where]) == 2
    assert main(["erase", "0" * 32, "--task", "synthetic0", "--ids", "1", where]) == 2
    assert main(["erase", result.run_id, "--task", "synthetic0", "--ids", "-5", where]) == 2
    assert capsys.readouterr().err.count("error:") == 3


def test_an_erasure_cut_off_after_its_upload_finishes_when_run_again(tmp_path, monkeypatch):
    """A crash between uploading a rewritten checkpoint and removing the old one leaves both;
    readers take the new one, and the same erasure run again removes the old one and records
    what was removed (tracking.Run.delete_file is where the crash is simulated)."""
    from pipeline import checkpoints, runfiles
    from pipeline.erasure import erase

    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, "strategy=[replay]", "strategies.replay.size=50", *TINY)
    result = run(cfg)
    buf = checkpoint(store, result.run_id, 1)[0].strategies[0].buffer
    victims = sorted(set(buf.ids[buf.valid & (buf.tasks == 0)].tolist()))[:4]

    def crash(self, path):  # type: ignore[no-untyped-def]
        raise SystemExit("killed between the upload and the removal")

    monkeypatch.setattr(Run, "delete_file", crash)
    with pytest.raises(SystemExit):
        erase(Store.at(store), result.run_id, "synthetic0", victims)
    monkeypatch.undo()
    r = Run.get(Store.at(store), result.run_id)
    assert [f.revision for f in checkpoints.checkpoint_files(r)[0]] == [0, 1]  # both are there
    buf = checkpoint(store, result.run_id, 0)[0].strategies[0].buffer  # the newest: erased
    assert not set(buf.ids[buf.valid & (buf.tasks == 0)].tolist()) & set(victims)
    assert runfiles.read_erasures(r) == []  # not recorded yet

    record = erase(Store.at(store), result.run_id, "synthetic0", victims)
    files = checkpoints.checkpoint_files(r)
    assert [[f.revision for f in fs] for fs in files.values()] == [[1], [1]]
    assert sum(record["removed"].values()) >= len(victims)  # counted from the old revision
    assert [e["ids"] for e in runfiles.read_erasures(r)] == [victims]
