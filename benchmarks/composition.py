"""Composing an experiment's config: ours (``pipeline.config.compose``) against Hydra's compose
API on the same files, the measured half of the decision in ``pipeline/config/__init__.py``.

Both compose ``conf/experiment/<experiment>.yaml`` with its ``defaults`` (a ``data`` and a
``model`` file) and the same overrides (``model=mlp``, ``optim.lr=...``), then build the typed
config and run the value rules (``OmegaConf.merge`` with the schema, ``check_values``), so the
two do the same work but the reading of the files. Hydra reads a copy of ``conf/`` whose
experiment files carry Hydra's form of ``defaults`` (a list ending in ``_self_``, one change
each file needs before Hydra could read it); its global state is cleared after every call, as a
sweep composing a config per trial in one process would have to.

hydra-core (1.3.8, the newest on PyPI on 2026-12-06) requires ``omegaconf<2.4`` and the pipeline
pins 2.4, so Hydra's side runs in an environment of its own, made by uv on the fly::

    .venv/bin/python benchmarks/composition.py            # ours, then Hydra's through uv
    .venv/bin/python benchmarks/composition.py --no-hydra # ours only

Writes ``docs/measured/composition.md`` (``benchmarks/record.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HYDRA = "hydra-core==1.3.8"
OVERRIDES = ["model=mlp", "optim.lr=0.002", "trainer.epochs=2", "seed=3"]


def ours(experiment: str, repeats: int) -> list[float]:
    """Seconds per composition with ``pipeline.config.compose.compose_raw``."""
    from pipeline.config.compose import compose_raw

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compose_raw(experiment, OVERRIDES)
        times.append(time.perf_counter() - start)
    return times


def hydra_tree(experiment: str, into: Path) -> None:
    """A copy of ``conf/`` that Hydra reads: the experiment's ``defaults`` as Hydra's list."""
    from omegaconf import OmegaConf

    shutil.copytree(ROOT / "conf", into, dirs_exist_ok=True)
    body = OmegaConf.load(ROOT / "conf" / "experiment" / f"{experiment}.yaml")
    defaults = [{k: v} for k, v in body.pop("defaults").items()]
    body = OmegaConf.merge({"defaults": [*defaults, "_self_"], "name": experiment}, body)
    (into / f"{experiment}.yaml").write_text(OmegaConf.to_yaml(body))


def hydra(experiment: str, repeats: int) -> list[float]:
    """Seconds per composition with Hydra's compose API (run inside Hydra's environment)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from pipeline.config.schema import ExperimentConfig
    from pipeline.config.validation import check_values

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        hydra_tree(experiment, Path(tmp))
        for _ in range(repeats):
            start = time.perf_counter()
            with initialize_config_dir(config_dir=tmp, version_base=None):
                raw = compose(config_name=experiment, overrides=OVERRIDES)
            typed = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), raw)
            check_values(OmegaConf.to_object(typed))
            GlobalHydra.instance().clear()
            times.append(time.perf_counter() - start)
    return times


def in_hydra_env(experiment: str, repeats: int) -> tuple[list[float], str]:
    """Run :func:`hydra` in an environment uv makes with hydra-core (and its OmegaConf)."""
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    code = (
        "import json, sys, omegaconf; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
        "import composition as c; "
        "print(json.dumps([c.hydra(sys.argv[3], int(sys.argv[4])), omegaconf.__version__]))"
    )
    cmd = [uv, "run", "--isolated", "--no-project", "--quiet", "--with", HYDRA, "--with", "numpy"]
    cmd += ["python", "-c", code, str(ROOT / "benchmarks"), str(ROOT), experiment, str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    times, version = json.loads(out.stdout.strip().splitlines()[-1])
    return times, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="seed_forgetting")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--no-hydra", action="store_true", help="measure ours only")
    record.add_argument(parser)
    args = parser.parse_args()

    import omegaconf

    rows = []
    mine = ours(args.experiment, args.repeats)
    rows.append(["ours (pipeline.config.compose)", f"OmegaConf {omegaconf.__version__}"])
    rows[-1].append(f"{statistics.median(mine) * 1000:.1f} ms")
    print(f"ours:  median {statistics.median(mine) * 1000:.1f} ms over {args.repeats}")
    if not args.no_hydra:
        theirs, version = in_hydra_env(args.experiment, args.repeats)
        rows.append([f"Hydra's compose API ({HYDRA})", f"OmegaConf {version}"])
        rows[-1].append(f"{statistics.median(theirs) * 1000:.1f} ms")
        print(f"Hydra: median {statistics.median(theirs) * 1000:.1f} ms over {args.repeats}")
    body = (
        f"`{args.experiment}` with `{' '.join(OVERRIDES)}`, composed into the typed config and "
        f"checked; median of {args.repeats} compositions in one process.\n\n"
        + record.table(["composition", "library", "time per config"], rows)
    )
    record.write("composition", body, args.measured)


if __name__ == "__main__":
    main()
