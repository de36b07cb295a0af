"""Typed experiment configuration: the dataclass schema every layer of ``conf/`` and every
override is merged into (:mod:`pipeline.config.compose` reads and composes them). A choice is an
enum (:mod:`pipeline.config.choices`), so OmegaConf refuses any other value; the rules a type
cannot state are in :mod:`pipeline.config.validation`. A bad value fails before any data is
read or any MLflow run exists, as one ``ConfigError`` line that names the key.

This is the bottom layer of the package: it knows no strategy. A strategy's hyperparameters
arrive as the plain mapping the YAML files and overrides give (``strategies:``), which
:func:`pipeline.experiment.compose` parses once against each strategy's ``Params``. Where things
live is the ``paths`` section (:class:`pipeline.config.paths.PathsConfig`) that every command reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

from pipeline.catalogue import datasets
from pipeline.config.choices import (  # the fields' types
    Accelerator,
    Activation,
    Augment,
    DistributedStrategy,
    ModelName,
    OptimizerName,
    Pool,
    Retention,
    Scenario,
    Schedule,
    Storage,
)
from pipeline.config.paths import PathsConfig

#: The classes of a generated (``synthetic``) task.
SYNTHETIC_CLASSES = 10

#: What Lightning's ``Trainer(precision=...)`` accepts (not an enum: "32-true" is no name).
PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")


SCENARIOS = tuple(s.value for s in Scenario)
BENCHMARKS = ("split", "split_mnist", "permuted_mnist", "rotated_mnist")
#: The task kinds besides the catalogue's datasets: generated, an image folder, arrays.
OTHER_KINDS = ("synthetic", "folder", "arrays", "shards")


def dataset_kinds() -> tuple[str, ...]:
    """What ``data.tasks.dataset`` may name: a dataset of the catalogue or another kind."""
    return (*datasets(), *OTHER_KINDS)


def dataset_classes(kind: str) -> int:
    """The classes of a task kind, where they are known before its files are read (0: the
    user's own data, counted when it is read)."""
    if kind == "synthetic":
        return SYNTHETIC_CLASSES
    return datasets()[kind].classes if kind in datasets() else 0


@dataclass
class TaskConfig:
    """One task of the sequence.

    Attributes:
        dataset: a dataset of the catalogue (``mnist``, ``cifar10``...: ``make data`` lists
            them), ``synthetic`` (generated), or the user's own files: ``folder`` (an image
            folder, one subfolder per class) or ``arrays`` (``.npz`` or ``.npy``), at ``path``.
        name: key used in metric names and reports; derived from the other fields when empty
            (``mnist``, ``mnist_01``, ``mnist_perm3``, ``mnist_rot45``).
        classes: original labels the task keeps (Split MNIST); empty keeps them all.
        permutation: seed of a fixed pixel permutation (Permuted MNIST); -1 for none.
        rotation: fixed rotation in degrees (Rotated MNIST).
        seed: for ``synthetic`` tasks, the seed of the task's class prototypes.
        path: the user's own data (``folder``, ``arrays``): an image folder (with ``train/``
            and ``test/`` subfolders, or one folder whose test split is carved), an ``.npz``
            (``images``, ``labels``, and optionally ``test_images``, ``test_labels``) or an
            ``.npy`` of images with its labels in ``labels``.
        labels: the ``.npy`` of labels that goes with an ``.npy`` of images at ``path``.

    A ``shards`` task reads the litdata shards at ``path`` (a folder or ``s3://`` prefix
    written by ``python -m pipeline shards``): held in memory or streamed (``data.storage``).
    """

    dataset: str = MISSING
    name: str = ""
    classes: list[int] = field(default_factory=list)
    permutation: int = -1
    rotation: float = 0.0
    seed: int = 0
    path: str = ""
    labels: str = ""


@dataclass
class SyntheticConfig:
    """Size of the synthetic tasks used by tests and smoke runs (no files needed)."""

    n_train: int = 1000
    n_test: int = 500
    noise: float = 0.35
    channels: int = 1
    size: int = 28


@dataclass
class DataConfig:
    """The task sequence and how it is batched.

    Attributes:
        tasks: the ordered task sequence.
        val_fraction: share of each task's training set held out for validation.
        split_seed: seed of the train/validation split; fixed apart from the experiment seed so
            that runs with different seeds are selected on the same validation samples.
        batch_size: training batch size.
        eval_batch_size: batch size of evaluation passes.
        benchmark: build ``tasks`` from a standard benchmark instead of listing them:
            ``split_mnist`` (``n_tasks`` tasks of consecutive digits), ``permuted_mnist``
            (``n_tasks`` fixed pixel permutations, seeds ``benchmark_seed + i``),
            ``rotated_mnist`` (rotations ``i * 180 / n_tasks`` degrees).
        permute_first: ``permuted_mnist``'s first task permuted too (the default, as Avalanche
            and Mammoth build it); false keeps it the plain images, as van de Ven and Tolias's
            code does.
        stream: single pass: each training sample is seen once, in stream order (needs
            ``trainer.epochs=1``), for data that exists only once.
        test_fraction: share of the user's own data held out as its test split, when a folder
            or file has no test split of its own.
        dataset: the dataset a ``split`` benchmark splits by classes (``cifar100``).
        classes_per_task: a ``split`` benchmark's classes per task (0: the classes spread
            evenly over ``n_tasks``; else ``n_tasks`` is the number of classes over it).
        class_order_seed: a ``split`` benchmark's class order: -1 keeps the labels' order,
            any other value shuffles them with that seed (the field's protocols fix one);
            ``${seed}`` shuffles them per run seed (van de Ven and Tolias 2019).
        image_size: ``[height, width]`` every task's images are resized to; empty: the tasks'
            sizes must agree.
        channels: 1 or 3: every task's images are converted to that many channels (grey
            replicated, or RGB to luma); 0: the tasks' channels must agree.
        augment: ``crop_flip``: each training batch is randomly cropped after zero-padding by
            ``crop_padding`` pixels and flipped horizontally, on the batch's device.
        crop_padding: the padding of ``crop_flip``.
        pad: zero pixels added on every side of every image, after ``image_size`` (2 makes
            MNIST's 28x28 the 32x32 of the protocols that pad it); before a task's permutation.
        normalise: scale pixels to [0, 1] and normalise them with the dataset's per-channel
            mean and std; False: only scale them to [0, 1] (the protocols that do not
            normalise MNIST, such as van de Ven and Tolias 2019).
        storage: where a ``shards`` task's images are held: ``memory`` (read once), ``streamed``
            (read from the shards as training goes, a few chunks in memory at a time) or
            ``auto``: streamed when its training images exceed ``memory_limit_gb``.
        memory_limit_gb: the size above which ``auto`` streams a task.
        erased: per task name, the ids of training samples removed from it (the right to
            erasure: ``make erase`` sets it on the run that unlearns them; a run from scratch
            with the same ids is what that run equals). Ids as ``Batch.id``: indices in the
            dataset's training file.
        canaries: training samples of ``canary_task`` planted with a wrong label (a membership
            audit's canaries: a model that still fits them remembers them; ``make audit``).
            Which samples and labels is fixed by ``canary_seed``, whatever the run's seed.
        canary_task: the task they are planted in (empty: the first).
        canary_seed: chooses the canaries and their labels.
    """

    tasks: list[TaskConfig] = field(default_factory=list)
    benchmark: str = ""
    n_tasks: int = 5
    benchmark_seed: int = 0
    permute_first: bool = True
    val_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 256
    stream: bool = False
    test_fraction: float = 0.2
    dataset: str = ""
    classes_per_task: int = 0
    class_order_seed: int = -1
    image_size: list[int] = field(default_factory=list)
    channels: int = 0
    augment: Augment = Augment.none
    crop_padding: int = 4
    pad: int = 0
    normalise: bool = True
    storage: Storage = Storage.auto
    memory_limit_gb: float = 2.0
    erased: dict[str, list[int]] = field(default_factory=dict)
    canaries: int = 0
    canary_task: str = ""
    canary_seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    """Network shape. The output head is shared by all tasks (domain-incremental).

    Attributes:
        name: ``cnn`` (LeNet-style), ``mlp`` or ``resnet18`` (the ResNet-18 of the
            continual-learning literature for small images: a 3x3 stem of stride 1, no max-pool,
            four stages of two basic blocks, global average pooling).
        width: the ResNet's base width (``nf``): 64 is the standard ResNet-18, 20 the reduced
            ResNet-18 of GEM (Lopez-Paz and Ranzato 2017) and Mammoth.
        channels: CNN convolution channels, one ``kernel_size`` convolution per entry.
        pool: where the CNN's 2x2 max-pools are: after ``each`` convolution (LeNet), or only
            after the ``last`` (the PyTorch MNIST example's layout: more features reach the
            fully connected layers).
        hidden: sizes of the fully connected hidden layers (after the convs for ``cnn``).
        dropout: dropout before each fully connected layer.
        activation: the fully connected hidden layers' nonlinearity: ``relu``, or ``tanh``
            (the MLP of continual-learning-baselines' LwF); the convolutions keep ReLU.
    """

    name: ModelName = ModelName.cnn
    width: int = 64
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 5
    pool: Pool = Pool.each
    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0
    activation: Activation = Activation.relu


@dataclass
class OptimConfig:
    """Optimizer, built at the start of every task.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: the learning rate (the peak of the schedule).
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: SGD's momentum.
        schedule: ``constant``, or ``cosine``: the rate falls from ``lr`` to 0 along each task's
            training steps (cosine annealing, restarted per task).
        carry_state: keep the optimizer's state from one task to the next (Adam's moment
            estimates and step count, SGD's momentum buffers), as van de Ven and Tolias's code
            does (its default ``--optimizer adam``). The default, false, starts each task with
            a fresh state (their ``adam_reset``; Avalanche's default). The learning rate and
            schedule are each task's own either way.
    """

    name: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Schedule = Schedule.constant
    carry_state: bool = False


@dataclass
class TrainerConfig:
    """Lightning Trainer settings, applied to the fresh Trainer built for each task.

    Attributes:
        epochs: epochs per task (unless ``iterations`` is set).
        iterations: optimizer steps per task (the protocols that count iterations, such as
            van de Ven and Tolias 2019's 2,000 per Split MNIST task), the training set cycled
            through in reshuffled epochs as often as it takes; 0: ``epochs`` decides.
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
        threads: CPU threads for torch; 0 keeps torch's default (one per core).
        max_batches: cap on training batches per epoch (0: all); shrinks smoke runs.
        validate_every_epoch: run the current task's validation split after each epoch.
        check_finite_every: check the loss for NaN/inf every this many steps (>= 1; the
            weights are checked again before every checkpoint).
        devices: processes per machine (CPU processes, or GPUs); more than 1 trains one run
            with Lightning's DDP (:mod:`pipeline.distributed`).
        num_nodes: machines; each runs the same command with ``NODE_RANK`` set.
        strategy: ``auto`` (one process, or DDP when ``devices * num_nodes > 1``) or ``ddp``.
    """

    epochs: int = 3
    iterations: int = 0
    accelerator: Accelerator = Accelerator.auto
    precision: str = "32-true"
    deterministic: bool = True
    threads: int = 0
    max_batches: int = 0
    validate_every_epoch: bool = True
    log_every_n_steps: int = 50
    progress_bar: bool = True
    gradient_clip_val: float = 0.0
    check_finite_every: int = 10
    devices: int = 1
    num_nodes: int = 1
    strategy: DistributedStrategy = DistributedStrategy.auto


@dataclass
class TrackingConfig:
    """What MLflow records (where: ``paths.store``).

    Attributes:
        experiment: MLflow experiment name; defaults to the experiment config's name.
        run_name: MLflow run name; MLflow picks one when empty.
        log_checkpoints: log a checkpoint after every task.
        figures: draw the run's figures (the accuracy matrix's heatmap, each task's accuracy
            along the sequence: 0.5 s of matplotlib per run); off, their data are still logged
            (JSON, CSV). Runs of a few seconds each (smoke tests, tiny sweeps) turn them off.
    """

    experiment: str = ""
    run_name: str = ""
    log_checkpoints: bool = True
    figures: bool = True


@dataclass
class AuditConfig:
    """The audit of an erasure (``make audit``; run after every exact unlearning).

    Attributes:
        references: runs retrained from scratch without the erased samples, with seeds
            ``seed + 1 ...``: the spread the unlearned model must fall in.
        after_erase: audit every unlearning before the original's weights are deleted.
    """

    references: int = 3
    after_erase: bool = True


@dataclass
class ExperimentConfig:
    """A whole experiment: the task sequence, the model, the strategies and how to train.

    Attributes:
        name: experiment name (the file name in conf/experiment/).
        seed: seeds model initialisation and data order.
        scenario: ``task`` (one head per task, task id given at test), ``domain`` (one
            shared head, no task id) or ``class`` (labels offset per task, one head over all
            classes seen so far, no task id).
        retention: ``any``, or ``none`` to refuse, before training, every strategy that keeps
            raw samples across task boundaries (data that privacy law may require deleted).
        strategy: strategy plugins, applied in this order; empty: the baseline strategy
            (plain fine-tuning).
        strategies: hyperparameters per strategy: as composed, the values the experiment and
            the overrides set; once resolved (:func:`pipeline.experiment.compose`), each
            strategy's ``Params`` with its defaults filled in.
        audit: how an erasure is audited.
        paths: where the data, the stores and the reports are.
    """

    name: str = MISSING
    description: str = ""
    seed: int = 0
    scenario: Scenario = Scenario["domain"]
    retention: Retention = Retention.any
    strategy: list[str] = field(default_factory=list)
    strategies: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (logged with every run; ``compose`` can read it back)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain containers (a choice as its string: a checkpoint holds no
    class of ours, which torch.load(weights_only=True) would refuse)."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
