"""retention=none: no raw training sample in anything a run writes (scanned byte by byte)."""

from pathlib import Path

import pytest
from conftest import small_synthetic

from pipeline.config import ConfigError, compose
from pipeline.data.datamodule import ContinualDataModule
from pipeline.runner import run_sequence
from pipeline.strategies import REGISTRY
from pipeline.tracking import client_for, local_path

TINY = (
    "trainer.epochs=1",
    "trainer.max_batches=5",
    "data.synthetic.n_train=200",
    "data.synthetic.n_test=100",
    "data.batch_size=32",
)


def written_bytes(store: Path, run_id: str) -> list[bytes]:
    run = client_for(store).get_run(run_id)
    art = local_path(run.info.artifact_uri)
    files = [p for p in art.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files)
    return [p.read_bytes() for p in files]


def sample_patterns(cfg) -> list[bytes]:
    """Each task-0 training sample as stored raw (uint8) and as trained on (float32)."""
    dm = ContinualDataModule(cfg.data, scenario=cfg.scenario)
    dm.setup()
    task = dm.tasks[0]
    images = task.train.images[:100]
    floats = (images.float() / 255 - task.mean) / task.std
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
    result = run_sequence(cfg)
    assert found(sample_patterns(cfg), written_bytes(store, result.run_id)) == 0


def test_the_scan_finds_samples_a_buffer_keeps(tmp_path):
    """Positive control: the same scan sees replay's stored samples in its checkpoints."""
    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, "strategy=[replay]", *TINY)
    result = run_sequence(cfg)
    assert found(sample_patterns(cfg), written_bytes(store, result.run_id)) > 0


def test_erasure_removes_samples_from_every_checkpoint(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.runner import load_checkpoint

    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, "strategy=[replay]", "strategies.replay.size=50", *TINY)
    result = run_sequence(cfg)
    art = local_path(client_for(store).get_run(result.run_id).info.artifact_uri)
    ckpts = sorted((art / "checkpoints").glob("*.ckpt"))

    def stored_ids(path: Path) -> set[int]:
        buf = load_checkpoint(path)[0].strategies[0].buffer
        return set(buf.ids[buf.valid & (buf.tasks == 0)].tolist())

    victims = sorted(stored_ids(ckpts[-1]))[:5]
    assert len(victims) == 5
    dm = ContinualDataModule(cfg.data)
    dm.setup()
    rows = [int((dm.tasks[0].train.ids == i).nonzero()) for i in victims]
    patterns = [dm.tasks[0].train.images[r].numpy().tobytes() for r in rows]
    assert found(patterns, written_bytes(store, result.run_id)) == 5

    ids = ",".join(map(str, victims))
    code = main(
        ["erase", result.run_id, "--task", "synthetic0", "--ids", ids, "--store", str(store)]
    )
    assert code == 0
    for path in ckpts:
        assert not stored_ids(path) & set(victims)
    assert found(patterns, written_bytes(store, result.run_id)) == 0
    run = client_for(store).get_run(result.run_id)
    assert run.data.metrics["retention/erased_samples"] >= 5
    assert "removed" in (art / "erasures.json").read_text()

    assert (
        main(["erase", result.run_id, "--task", "nope", "--ids", "1", "--store", str(store)]) == 2
    )
    assert (
        main(["erase", "0" * 32, "--task", "synthetic0", "--ids", "1", "--store", str(store)]) == 2
    )
    assert capsys.readouterr().err.count("error:") == 2
