"""Tasks written as litdata shards: held in memory when small, streamed when not (the choice
recorded in the run's params), from a folder or an object store (moto's S3 server on loopback,
an emulator); replay, erasure and resume on streamed tasks; broken shards refused in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import run, small_synthetic
from helpers.stores import checkpoint, client

from pipeline import runfiles
from pipeline.cli import main
from pipeline.config.schema import DataConfig, TaskConfig
from pipeline.config.validation import check_values
from pipeline.data.datamodule import ContinualDataModule
from pipeline.data.loading import write_task_shards
from pipeline.data.shards import MANIFEST, StreamedSplit
from pipeline.data.tasks import Split
from pipeline.server.common import free_port
from pipeline.store import Store

CHAOS = Path(__file__).with_name("chaos.py")
SMALL = ("trainer.epochs=1", "trainer.max_batches=4", "data.batch_size=32", "trainer.threads=1")
STREAMED = "data.storage=streamed"


def tasks_of(*paths: Path | str) -> str:
    return "data.tasks=[" + ",".join(f"{{dataset: shards, path: '{p}'}}" for p in paths) + "]"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two generated tasks (400 training samples each) written as shards."""
    top = tmp_path_factory.mktemp("shards")
    data = DataConfig(synthetic=DataConfig().synthetic)
    data.synthetic.n_train, data.synthetic.n_test = 400, 100
    for seed in (0, 1):
        task = TaskConfig(dataset="synthetic", seed=seed)
        check_values(DataConfig(tasks=[task]))
        write_task_shards(task, data, top, str(top / f"task{seed}"))
    return top / "task0", top / "task1"


def held(cfg_data: DataConfig) -> list[type]:
    dm = ContinualDataModule(cfg_data)
    dm.setup()
    return [type(t.train) for t in dm.tasks]


def test_small_shards_are_held_in_memory_and_large_ones_streamed(shards: tuple[Path, Path]) -> None:
    tasks = [TaskConfig(dataset="shards", path=str(p)) for p in shards]
    auto = DataConfig(tasks=list(tasks))
    check_values(auto)
    assert held(auto) == [Split, Split]
    tiny = DataConfig(tasks=list(tasks), memory_limit_gb=1e-6)  # 400 x 784 bytes is above it
    check_values(tiny)
    assert held(tiny) == [StreamedSplit, StreamedSplit]
    # the same samples either way, and the same validation split (written into the shards)
    memory, streamed = ContinualDataModule(auto), ContinualDataModule(tiny)
    memory.setup()
    streamed.setup()
    for a, b in zip(memory.tasks, streamed.tasks, strict=True):
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(a, split).ids, getattr(b, split).ids)
            assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
        rows = torch.tensor([0, 7, 99])
        assert torch.equal(a.train.images[rows], b.train.images[rows])


def test_a_streamed_run_records_it_and_replay_keeps_the_raw_samples(
    shards: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = small_synthetic(
        tmp_path / "mlruns", tasks_of(*shards), STREAMED, *SMALL, "strategy=[replay]"
    )
    result = run(cfg)
    data = client(tmp_path / "mlruns").get_run(result.run_id).data
    params = data.params
    assert (params["held.task0"], params["held.task1"], params["data.storage"]) == ("streamed",) * 3
    buf = checkpoint(tmp_path / "mlruns", result.run_id, 1)[0].strategies[0].buffer
    # the retention ledger counts what the buffer keeps, as for tasks in memory
    assert data.metrics["retention/raw_samples"] == int(buf.valid.sum()) > 0
    memory = ContinualDataModule(small_synthetic(tmp_path / "m", tasks_of(*shards)).data)
    memory.setup()
    first = memory.tasks[0].train
    row_of = {int(i): r for r, i in enumerate(first.ids.tolist())}
    mine = buf.valid & (buf.tasks == 0)
    assert int(mine.sum()) > 0
    for image, sample in zip(buf.images[mine], buf.ids[mine], strict=True):
        assert torch.equal(image, first.images[row_of[int(sample)]])  # raw uint8, as stored


def test_erasure_reaches_a_streamed_run(shards: tuple[Path, Path], tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, tasks_of(*shards), STREAMED, *SMALL, "strategy=[replay]")
    result = run(cfg)
    buffer = checkpoint(store, result.run_id, 1)[0].strategies[0].buffer
    kept = buffer.ids[buffer.valid & (buffer.tasks == 0)][:3].tolist()
    ids = ",".join(map(str, kept))
    assert (
        main(
            [
                "erase",
                result.run_id,
                "--task",
                "task0",
                "--ids",
                ids,
                "--mode",
                "buffers",
                f"paths.store={store}",
            ]
        )
        == 0
    )
    after = checkpoint(store, result.run_id, 1)[0].strategies[0].buffer
    assert not set(kept) & set(after.ids[after.valid & (after.tasks == 0)].tolist())
    # exact unlearning retrains the task without them: refused for a streamed one, in one line
    assert (
        main(["erase", result.run_id, "--task", "task1", "--ids", "1", f"paths.store={store}"]) == 2
    )


def test_a_killed_streamed_run_resumes_to_the_uninterrupted_result(
    shards: tuple[Path, Path], tmp_path: Path
) -> None:
    store = tmp_path / "mlruns"
    argv = ["run", "synthetic_forgetting", tasks_of(*shards), STREAMED, *SMALL]
    argv += ["trainer.progress_bar=false", "tracking.figures=false", f"paths.store={store}"]
    target = "pipeline.checkpoints:save_checkpoint"
    done = subprocess.run(
        [sys.executable, str(CHAOS), target, "1", "after", *argv], capture_output=True, timeout=300
    )
    assert done.returncode == -9, done.stderr[-2000:]
    c = client(store)
    (only,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    assert (
        main(["run", "--resume", only.info.run_id, "trainer.threads=1", f"paths.store={store}"])
        == 0
    )
    expected = run(small_synthetic(tmp_path / "whole", tasks_of(*shards), STREAMED, *SMALL))
    got = runfiles.read_result(Store.at(store), only.info.run_id)
    for split in ("val", "test"):
        np.testing.assert_array_equal(got.matrix[split], expected.matrix[split])


def test_joint_on_streamed_tasks_is_refused_before_any_run(
    shards: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlruns"
    argv = ["run", "synthetic_forgetting", tasks_of(*shards), STREAMED, "strategy=[joint]"]
    assert main([*argv, f"paths.store={store}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "'joint' trains on every task seen at once" in line and "task0, task1" in line
    assert not store.exists()


def test_shards_of_another_version_or_none_are_refused_in_one_line(
    shards: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    shutil.copytree(shards[0], old)
    manifest = (old / MANIFEST).read_text().replace('"format": 1', '"format": 0')
    (old / MANIFEST).write_text(manifest)
    store = tmp_path / "mlruns"
    for path, says in [
        (old, "was written in shards format 0, this version reads 1"),
        (tmp_path / "none", f"holds no readable {MANIFEST}"),
    ]:
        assert main(["run", "synthetic_forgetting", tasks_of(path), f"paths.store={store}"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: data.tasks.path: {path}") and says in line, line
    assert not store.exists()


def test_shards_deleted_mid_run_fail_it_in_one_line_and_it_resumes_once_back(
    shards: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = tmp_path / "second"
    shutil.copytree(shards[1], second)
    store = tmp_path / "mlruns"
    cfg = small_synthetic(store, tasks_of(shards[0], second), STREAMED, *SMALL)
    original = ContinualDataModule.set_task

    def vanish(self: ContinualDataModule, index: int) -> None:
        if index == 1 and (second / "train").exists():
            shutil.move(second / "train", tmp_path / "moved")  # the share went away
        original(self, index)

    monkeypatch.setattr(ContinualDataModule, "set_task", vanish)
    from pipeline.data.tasks import DataError

    with pytest.raises(DataError, match=rf"^{second}/train: .*") as info:
        run(cfg)
    assert "\n" not in str(info.value)
    c = client(store)
    (only,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    assert only.info.status == "FAILED"
    shutil.move(tmp_path / "moved", second / "train")
    monkeypatch.setattr(ContinualDataModule, "set_task", original)
    assert main(["run", "--resume", only.info.run_id, f"paths.store={store}"]) == 0


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's S3 server on loopback (an emulator of the S3 API), with a bucket ``team``."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import boto3

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket="team")
            break
        except Exception:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.3)
    yield "s3://team"
    server.kill()
    server.wait()


def test_shards_written_to_and_streamed_from_an_object_store(s3: str, tmp_path: Path) -> None:
    where = f"{s3}/shards/a"
    write = ["shards", "synthetic_forgetting", "--task", "synthetic0", "--out", where]
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *write, "data.synthetic.n_train=300"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    store = tmp_path / "mlruns"
    argv = ["run", "synthetic_forgetting", tasks_of(where), STREAMED, *SMALL]
    argv += ["trainer.progress_bar=false", "tracking.figures=false", f"paths.store={store}"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    c = client(store)
    (only,) = c.search_runs([c.get_experiment_by_name("synthetic_forgetting").experiment_id])
    assert only.data.params["held.a"] == "streamed" and only.info.status == "FINISHED"
