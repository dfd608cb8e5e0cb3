"""``train``: train or fine-tune MV1/MV2 (+ULSAM anywhere legal) on Fashion-MNIST or an ImageFolder.

Defaults are the paper's recipes (docs: /ULSAM.md "Training recipes"), scaled to the flags:

* MV1: SGD momentum 0.9, batch 128, lr 0.1 divided by 10 every 30 of 90 epochs.
* MV2: SGD momentum 0.9, weight decay 4e-5, batch 98, lr 0.045 times 0.98 every epoch (200 epochs,
  the paper's from-scratch length on the smaller data sets).

Scaling: the lr follows the batch size linearly (``lr * batch / paper_batch``) unless ``--lr`` is
given; a shorter ``--epochs`` compresses the schedule to the same shape (MV1 decays at the same
fractions of training; MV2's per-epoch factor becomes ``0.98 ** (200 / epochs)``, so the lr ends
at the same fraction of its start) unless ``--lr-step`` / ``--lr-gamma`` is given.

Runs are deterministic for a seed on CPU: each epoch's shuffle, augmentation and dropout draw from
generators seeded by ``(seed, epoch)``, so a resumed run reproduces an uninterrupted one bit for bit.
A run directory holds ``epoch_NNN.pt`` (model + optimizer, resumable and exportable), ``metrics.jsonl``
(or ``.csv``) and ``final.pt`` (model only, with the test accuracy in its meta).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from ulsam_deploy.declared import Flag, check_flags
from ulsam_deploy.errors import UserError
from ulsam_deploy.events import SILENT, Events
from ulsam_deploy.artifacts import atomic_target, check_output, write_bytes
from ulsam_deploy.models import build_model, load_pretrained
from ulsam_deploy.models.checkpoint import FORMAT, read_checkpoint_file, save_checkpoint
from ulsam_deploy.models.mobilenet import MobileNetULSAM
from ulsam_deploy.models.ulsam import ULSAM

PAPER_RECIPES = {
    "mv1": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 4e-5, "batch_size": 128, "lr": 0.1,
            "schedule": "step", "lr_step": 30, "lr_step_factor": 0.1, "epochs": 90, "reference_epochs": 90},
    "mv2": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 4e-5, "batch_size": 98, "lr": 0.045,
            "schedule": "exponential", "lr_gamma": 0.98, "epochs": 200, "reference_epochs": 200},
}
PAPER_NOTE = ("MV1: SGD 0.9, batch 128, lr 0.1 /10 every 30 epochs (90 ImageNet); MV2: SGD 0.9, wd 4e-5, batch 98, "
              "lr 0.045 x0.98/epoch (200 epochs on fine-grained sets). MV1's weight decay is not given in the paper; "
              "4e-5 (MobileNet's usual) is used.")
DATASETS = ("fashion-mnist",)
RESUME_FREE = {"epochs", "threads", "device", "workers", "out", "resume", "force", "log_every", "metrics_format",
               "keep"}  # may change on --resume; every other flag must match the run (or be left out)
FIXED_DEFAULTS = {"arch": "mv2", "width": 1.0, "ulsam": "", "groups": 4, "dropout": 0.2, "pretrained": False,
                  "augment": True, "seed": 0}


@dataclass
class TrainOptions:
    """Every flag of ``train``; ``None`` means "the recipe's default" (resolved by :func:`resolve_options`)."""

    data: str | None = None  # ImageFolder root (ROOT/<class>/<img>, or ROOT/train + ROOT/val|test)
    dataset: str | None = None  # "fashion-mnist"
    val: str | None = None  # ImageFolder of held-out images (default: ROOT/val|test or a 10 % split)
    arch: str | None = None  # mv2
    width: float | None = None  # 1.0
    ulsam: str | None = None  # none
    groups: int | None = None  # 4
    input_size: int | None = None  # 64 for Fashion-MNIST, 224 for folders
    # 1 for Fashion-MNIST, 3 for folders
    in_channels: Annotated[int | None, Flag("--in-channels", choices=(1, 3))] = None
    dropout: Annotated[float | None, Flag("--dropout", ge=0, lt=1)] = None  # 0.2
    pretrained: bool | None = None
    epochs: Annotated[int | None, Flag("--epochs", ge=1)] = None
    batch_size: Annotated[int | None, Flag("--batch-size", ge=2, why="BatchNorm needs two samples")] = None
    lr: Annotated[float | None, Flag("--lr", gt=0)] = None
    momentum: Annotated[float | None, Flag("--momentum", ge=0, lt=1)] = None
    weight_decay: Annotated[float | None, Flag("--weight-decay", ge=0)] = None
    lr_gamma: Annotated[float | None, Flag("--lr-gamma", gt=0, le=1)] = None  # MV2 (exponential)
    lr_step: Annotated[int | None, Flag("--lr-step", ge=1, why="epochs")] = None  # MV1 (step)
    augment: bool | None = None  # True
    # first N training images (balanced over classes for folders)
    limit: Annotated[int | None, Flag("--limit", ge=1, why="images")] = None
    test_limit: Annotated[int | None, Flag("--test-limit", ge=1, why="images")] = None
    seed: int | None = None  # 0
    device: str = "auto"
    threads: Annotated[int | None, Flag("--threads", ge=1)] = None
    workers: Annotated[int, Flag("--workers", ge=0)] = 0
    out: str = "runs/train"
    resume: bool = False
    force: bool = False
    metrics_format: Annotated[str, Flag("--metrics", choices=("jsonl", "csv"))] = "jsonl"
    log_every: Annotated[int, Flag("--log-every", ge=1)] = 20
    keep: Annotated[int, Flag("--keep", ge=0)] = 0  # keep only the last K epoch checkpoints (0: all)

    def recipe_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float
    images_per_s: float
    steps: list = field(default_factory=list)  # (step, loss) every log_every steps

    def to_row(self) -> dict:
        row = asdict(self)
        row.pop("steps")
        return row


@dataclass
class TrainResult:
    out: Path
    final_checkpoint: Path
    history: list[EpochRecord]
    test_accuracy: float
    test_samples: int
    seconds: float
    resumed_from: int = 0

    @property
    def last(self) -> EpochRecord:
        return self.history[-1]


# --------------------------------------------------------------------------------------- options

def resolve_options(opts: TrainOptions) -> TrainOptions:
    """Fill recipe defaults and check every flag (one-sentence UserError on bad input)."""
    from ulsam_deploy.models.config import canonical_arch

    o = TrainOptions(**opts.recipe_dict())
    for name, value in FIXED_DEFAULTS.items():
        if getattr(o, name) is None:
            setattr(o, name, value)
    check_flags(o)  # the declared ranges of what was given; the recipe's defaults below keep them by construction
    o.arch = canonical_arch(o.arch)
    o.ulsam = o.ulsam or ""
    if (o.data is None) == (o.dataset is None):
        raise UserError("Give exactly one training set: an ImageFolder directory (DATA) or --dataset fashion-mnist.")
    if o.dataset is not None:
        o.dataset = o.dataset.strip().lower().replace("_", "-")
        if o.dataset not in DATASETS:
            raise UserError(f"Unknown --dataset '{o.dataset}'; choose one of: {', '.join(DATASETS)} (or give an ImageFolder directory).")
        if o.val is not None:
            raise UserError("--val is for ImageFolder training; Fashion-MNIST is evaluated on its own test set.")
    recipe = PAPER_RECIPES[o.arch]
    if o.in_channels is None:
        o.in_channels = 1 if o.dataset == "fashion-mnist" else _folder_channels(o.data)
    if o.dataset == "fashion-mnist" and o.in_channels != 1:
        raise UserError("Fashion-MNIST is grey: use --in-channels 1 (the default for it).")
    if o.input_size is None:
        o.input_size = 64 if o.dataset == "fashion-mnist" else 224
    if o.input_size < 16:
        raise UserError(f"--input-size {o.input_size} is too small for MobileNet's 32x downsampling; use at least 16 (32 or more).")
    if o.epochs is None:
        o.epochs = recipe["epochs"]
    if o.batch_size is None:
        o.batch_size = recipe["batch_size"]
    if o.lr is None:
        o.lr = recipe["lr"] * o.batch_size / recipe["batch_size"]
    o.momentum = recipe["momentum"] if o.momentum is None else o.momentum
    o.weight_decay = recipe["weight_decay"] if o.weight_decay is None else o.weight_decay
    if o.arch == "mv1":
        if o.lr_gamma is not None:
            raise UserError("--lr-gamma is MV2's per-epoch factor; MV1's schedule is a step decay: use --lr-step.")
        if o.lr_step is None:
            o.lr_step = max(1, round(recipe["lr_step"] * o.epochs / recipe["reference_epochs"]))
    else:
        if o.lr_step is not None:
            raise UserError("--lr-step is MV1's step decay; MV2's schedule is exponential: use --lr-gamma.")
        if o.lr_gamma is None:
            o.lr_gamma = recipe["lr_gamma"] ** (recipe["reference_epochs"] / o.epochs)
    if o.pretrained:
        if o.arch != "mv2" or abs(o.width - 1.0) > 1e-9:
            raise UserError("--pretrained loads torchvision's ImageNet MobileNet-V2 x1.0 weights; use --arch mv2 --width 1.0.")
    o.device = resolve_device(o.device)
    _check_model_flags(o)
    return o


def _check_model_flags(o: TrainOptions) -> None:
    """Refuse an illegal model (position, groups, width) before anything is read or written."""
    from ulsam_deploy.models.config import ModelConfig, layer_specs
    from ulsam_deploy.models.positions import validate_positions

    config = ModelConfig(arch=o.arch, width=o.width, ulsam=o.ulsam, groups=o.groups, num_classes=2,
                         input_size=o.input_size, in_channels=o.in_channels, dropout=o.dropout)
    validate_positions(config.positions, layer_specs(config), config.groups, config.arch)


def resolve_device(device: str) -> str:
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU here; use --device cpu.")
        return device
    if device != "cpu":
        raise UserError(f"Unknown --device '{device}'; use cpu, cuda, cuda:N or auto.")
    return device


def lr_at(opts: TrainOptions, epoch: int) -> float:
    """Learning rate of 1-based ``epoch`` under the (scaled) paper schedule."""
    if opts.arch == "mv1":
        return opts.lr * PAPER_RECIPES["mv1"]["lr_step_factor"] ** ((epoch - 1) // opts.lr_step)
    return opts.lr * opts.lr_gamma ** (epoch - 1)


# ------------------------------------------------------------------------------------------ data

@dataclass
class TrainData:
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    class_names: list[str]
    preprocess: object  # data.Preprocess
    description: str
    extra_meta: dict = field(default_factory=dict)


def load_data(o: TrainOptions) -> TrainData:
    from ulsam_deploy.data import FashionMNIST, ImageFolder, Preprocess
    from ulsam_deploy.data.fashion_mnist import CLASSES, FOLDER_NAMES, default_preprocess

    if o.dataset == "fashion-mnist":
        pre = default_preprocess(o.input_size)
        train = FashionMNIST("train", preprocess=pre, limit=o.limit)
        test = FashionMNIST("test", preprocess=pre, limit=o.test_limit)
        return TrainData(train, test, list(FOLDER_NAMES), pre,
                         f"Fashion-MNIST (Debian dataset-fashion-mnist): {len(train)} train / {len(test)} test images, "
                         f"28x28 grey resized to {o.input_size}x{o.input_size} (PIL bilinear)",
                         {"class_titles": list(CLASSES), "dataset": "fashion-mnist"})
    root = Path(o.data)
    if o.in_channels == 1:
        pre = Preprocess(o.input_size, 1, 1.0, (0.5,), (0.5,))
    else:
        pre = Preprocess(o.input_size, 3, 1.0)
    split_root, val_root = root, None
    for name in ("val", "test"):
        if (root / "train").is_dir() and (root / name).is_dir():
            split_root, val_root = root / "train", root / name
            break
    if o.val is not None:
        val_root = Path(o.val)
    train = ImageFolder(split_root, pre, limit=o.limit)
    if val_root is not None:
        test = ImageFolder(val_root, pre, classes=train.classes, limit=o.test_limit)
        how = f"held-out folder {val_root}"
    else:
        train, test = _holdout_split(train, o.seed, o.test_limit)
        how = "a seeded 10 % per-class hold-out of the training folder"
    return TrainData(train, test, list(getattr(train, "classes", None) or train.dataset.classes), pre,
                     f"ImageFolder {split_root}: {len(train)} train / {len(test)} test images ({how}), "
                     f"{'grey' if o.in_channels == 1 else 'RGB'} {o.input_size}x{o.input_size}",
                     {"dataset": str(root)})


def _holdout_split(folder, seed: int, test_limit: int | None):
    gen = torch.Generator().manual_seed(seed)
    labels = folder.labels
    test_idx, train_idx = [], []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_test = max(1, len(members) // 10) if len(members) > 1 else 0
        test_idx += members[:n_test].tolist()
        train_idx += members[n_test:].tolist()
    if not test_idx or not train_idx:
        raise UserError(f"'{folder.root}' is too small to hold out test images; add images or pass --val DIR.")
    test_idx = sorted(test_idx)[: test_limit or None]
    train_set = torch.utils.data.Subset(folder, sorted(train_idx))
    train_set.classes = folder.classes
    return train_set, torch.utils.data.Subset(folder, test_idx)


def _folder_channels(root: str | None) -> int:
    """1 when the image folder holds grey images only (its first few files, by PIL's mode), else 3: a folder of
    grey PNGs is not trained as RGB unless --in-channels 3 says so."""
    from PIL import Image

    from ulsam_deploy.data.sources import is_image, walk_files

    if not root or not Path(root).is_dir():
        return 3
    files = [f for f in walk_files(Path(root)) if is_image(f)][:16]
    modes = set()
    for path in files:
        try:
            with Image.open(path) as image:
                modes.add(image.mode)
        except OSError:
            continue
    return 1 if modes and modes <= {"L", "LA", "I", "I;16", "1"} else 3


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Batches in one epoch: every image is used; only a last batch of a single image is left out (BatchNorm cannot
    train on one sample), and the order reshuffles every epoch."""
    full, rest = divmod(count, batch_size)
    return max(1, full + (1 if rest > 1 else 0))


def _batches(dataset, order: torch.Tensor, batch_size: int, workers: int, drop_small_last: bool):
    """Yield ``(uint8 images, labels)`` for the index order; in-memory sets are sliced directly. ``drop_small_last``
    (training): a last batch of one image is left out, since BatchNorm cannot train on it."""
    chunks = list(order.split(batch_size))
    if drop_small_last and len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        for idx in chunks:
            yield images[idx], dataset.labels[idx]
        return
    loader = torch.utils.data.DataLoader(_Guarded(dataset), batch_sampler=[c.tolist() for c in chunks],
                                         num_workers=workers, collate_fn=_collate)
    for batch in loader:
        if isinstance(batch, _Unreadable):  # raised here, in this process: one sentence, not a worker's traceback
            raise UserError(batch.message)
        yield batch


@dataclass
class _Unreadable:
    """What a loader worker returns for a sample it could not read (its UserError's sentence)."""

    message: str


class _Guarded(torch.utils.data.Dataset):
    """``dataset`` whose unreadable samples come back as :class:`_Unreadable` instead of raising in a worker."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except UserError as exc:
            return _Unreadable(str(exc))


def _collate(samples):
    bad = next((s for s in samples if isinstance(s, _Unreadable)), None)
    return bad if bad is not None else torch.utils.data.default_collate(samples)


def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random translation (zero-padded crop of size/8), on uint8 NCHW."""
    n, _, h, w = batch.shape
    flip = torch.rand(n, generator=gen) < 0.5
    batch = torch.where(flip.view(n, 1, 1, 1), batch.flip(3), batch)
    pad = max(1, h // 8)
    padded = nn.functional.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n, h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n, w
    index_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[index_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # n, h, w, c
    return out.permute(0, 3, 1, 2).contiguous()


# -------------------------------------------------------------------------------------- progress

# ------------------------------------------------------------------------------------ checkpoints

_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.pt$")


def epoch_checkpoints(out: Path) -> list[tuple[int, Path]]:
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found)


def save_training_checkpoint(model: MobileNetULSAM, path: Path, train_state: dict, *, class_names, mean, std,
                             **meta) -> Path:
    """Like :func:`save_checkpoint` (same format, exportable) plus a ``train_state`` entry for ``--resume``."""
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "class_names": list(class_names),
        "input_size": model.config.input_size,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_state": train_state,
    }
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return path


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def write_metrics(out: Path, history: list[EpochRecord], fmt: str) -> Path:
    """Rewrite the metrics log from the history (atomic; consistent with the checkpoints after a resume)."""

    if fmt == "csv":
        buffer = io.StringIO()
        rows = [r.to_row() for r in history]
        writer = csv.DictWriter(buffer, fieldnames=list(EpochRecord.__dataclass_fields__.keys() - {"steps"})
                                if not rows else list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
        return write_bytes(buffer.getvalue().encode(), out / "metrics.csv")
    lines = []
    for r in history:
        lines += [json.dumps({"type": "step", "epoch": r.epoch, "step": s, "loss": loss}) for s, loss in r.steps]
        lines.append(json.dumps({"type": "epoch", **r.to_row()}))
    return write_bytes(("\n".join(lines) + "\n").encode(), out / "metrics.jsonl")


# ------------------------------------------------------------------------------------------ train

def evaluate(model: nn.Module, dataset, preprocess, device: str, batch_size: int = 256, workers: int = 0,
             events: Events = SILENT, name: str = "test") -> tuple[float, float, int]:
    """(mean cross-entropy, top-1 accuracy, images) of ``model`` on ``dataset`` in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    order = torch.arange(len(dataset))
    total = math.ceil(len(dataset) / batch_size)
    events.progress(name, 0, total)
    done = 0
    try:
        with torch.no_grad():
            for images, labels in _batches(dataset, order, batch_size, workers, drop_small_last=False):
                x = preprocess.normalize(images.to(device))
                labels = labels.to(device)
                logits = model(x)
                total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                done += 1
                events.progress(name, done, total)
    finally:
        if done < total:
            events.progress(name, total, total)  # the phase ends even when the loop did not
    return total_loss / max(seen, 1), correct / max(seen, 1), seen


def _check_ulsam_resolution(model: MobileNetULSAM, events: Events) -> dict[str, list[int]]:
    """Shapes each ULSAM sees at the input size; warn where the map is 1x1 (softmax constant, block degenerate)."""
    shapes: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, ULSAM):
            key = f"{int(name.split('.')[1]) + 1}" if name.startswith("features.") else f"{name.split('.')[1]}:1"
            hooks.append(module.register_forward_hook(lambda m, i, o, key=key: shapes.__setitem__(key, list(i[0].shape[1:]))))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, model.config.input_size, model.config.input_size))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    for key, (c, h, w) in shapes.items():
        if h * w == 1:
            events.warn(f"ULSAM at {key} sees a 1x1 map at input {model.config.input_size}: its softmax is constant, "
                             "so it only scales features by 2; use a larger --input-size or an earlier position.")
    return shapes


def train(opts: TrainOptions, events: Events = SILENT) -> TrainResult:
    """Run (or resume) a training run; returns the history and the final checkpoint path."""
    out = Path(opts.out)
    check_run_folder(out, opts)
    existing = epoch_checkpoints(out)
    container = None
    if opts.resume:
        if not existing:
            raise UserError(f"Nothing to resume in '{out}' (no epoch_NNN.pt); start the run without --resume.")
        container, opts = _resume_state(opts, existing[-1][1])
    elif existing and not opts.force:
        raise UserError(f"'{out}' already holds a run (epoch {existing[-1][0]}); pass --resume to continue it, "
                        "--force to start over, or another --out.")
    o = resolve_options(opts)
    start_threads = torch.get_num_threads()
    if o.threads:
        torch.set_num_threads(o.threads)
    try:
        return _train(o, out, existing, container, events)
    finally:
        if o.threads:
            torch.set_num_threads(start_threads)


RUN_FILES = ("final.pt", "metrics.jsonl", "metrics.csv")


def check_run_folder(out: Path, opts: TrainOptions) -> None:
    """Check every path a run writes before any work: the folder itself, ``final.pt``, the metrics log and the
    epoch checkpoints. A link or special file is never written through; a user's file is replaced only by
    ``--force`` (or, with ``--resume``, the run's own files)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out '{out}' is not a folder (a file, link or special file); give a folder for the run.")
    if not out.exists():
        check_output(out / "final.pt", force=False, what="run's final checkpoint")
        return
    own = sorted(p.name for p in out.iterdir() if p.name in RUN_FILES or _EPOCH_FILE.match(p.name))
    for name in own:
        check_output(out / name, force=True, what="run's files")  # links, folders, FIFOs: never written through
    has_epochs = any(_EPOCH_FILE.match(name) for name in own)  # a resumable run: said by train() itself
    if own and not has_epochs and not opts.force and not opts.resume:
        raise UserError(f"'{out}' already holds {', '.join(own[:3])}{' ...' if len(own) > 3 else ''}; pass --resume "
                        "to continue that run, --force to start over (they are replaced), or another --out.")
    check_output(out / "final.pt", force=True, what="run's final checkpoint")


def _check_resume_fields(container: dict, path: Path) -> None:
    """A resume point is untrusted input: the epoch, the history and the recipe must have their types, or the run
    stops here in one sentence (rather than deep inside training)."""
    from pydantic import TypeAdapter, ValidationError

    state, recipe = container.get("train_state"), container["meta"].get("recipe")
    problem = None
    try:
        if not isinstance(state, dict) or not isinstance(recipe, dict):
            problem = "train_state and meta.recipe must be dicts"
        elif type(state.get("epoch")) is not int or state["epoch"] < 1:
            problem = f"train_state.epoch must be a whole number of at least 1, not {state.get('epoch')!r}"
        elif not isinstance(state.get("optimizer"), dict):
            problem = "train_state.optimizer must be the optimizer's state dict"
        else:
            TypeAdapter(list[EpochRecord]).validate_python(state.get("history"), strict=False)
            known = {f.name for f in fields(TrainOptions)}
            TypeAdapter(TrainOptions).validate_python({k: v for k, v in recipe.items() if k in known})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "a field"
        problem = f"{where}: {first['msg'].lower()}"
    if problem is not None:
        raise UserError(f"'{path}' cannot be resumed ({problem[:200]}); start a new run with --force.")


def _resume_state(opts: TrainOptions, path: Path) -> tuple[dict, TrainOptions]:
    """The checkpoint to resume from, and the run's recipe with the flags that may change applied."""
    container = read_checkpoint_file(path)
    if not isinstance(container, dict) or "train_state" not in container or "recipe" not in (container.get("meta") or {}):
        raise UserError(f"'{path}' is not a resumable training checkpoint of this tool; start a new run with --force.")
    _check_resume_fields(container, path)
    recipe = container["meta"]["recipe"]
    given = opts.recipe_dict()
    differs = [k for k, v in given.items() if k not in RESUME_FREE and v is not None and k in recipe
               and recipe[k] != v and not (isinstance(v, (int, float)) and isinstance(recipe[k], (int, float))
                                           and math.isclose(v, recipe[k]))]
    if differs:
        shown = ", ".join(f"--{k.replace('_', '-')} {given[k]} (run: {recipe[k]})" for k in differs[:4])
        raise UserError(f"--resume continues the run in '{path.parent}' with its own recipe, and {shown} differs; "
                        "drop those flags or start a new run.")
    merged = {k: recipe.get(k) for k in given}
    for k in RESUME_FREE:
        if given[k] is not None:
            merged[k] = given[k]
    merged["epochs"] = given["epochs"] or recipe.get("epochs")
    return container, TrainOptions(**merged)


def _train(o: TrainOptions, out: Path, existing, container: dict | None, events: Events) -> TrainResult:
    started = time.perf_counter()
    device = o.device
    start_epoch, history = 0, []
    if container is not None:
        start_epoch = int(container["train_state"]["epoch"])
        history = [EpochRecord(**r) for r in container["train_state"]["history"]]
        if start_epoch >= o.epochs:
            raise UserError(f"The run in '{out}' already finished epoch {start_epoch} of {o.epochs}; "
                            f"raise --epochs above {start_epoch} to train further.")

    events.detail(f"Loading data ({o.dataset or o.data})")
    data = load_data(o)
    num_classes = len(data.class_names)

    torch.manual_seed(o.seed)
    model = build_model(o.arch, o.width, o.ulsam, o.groups, num_classes, o.input_size, in_channels=o.in_channels,
                        dropout=o.dropout)
    pretrained_report = None
    if o.pretrained and container is None:
        pretrained_report = _load_pretrained(model, o.in_channels)
        events.detail(f"Pretrained ImageNet MV2 weights: {pretrained_report}")
    ulsam_shapes = _check_ulsam_resolution(model, events)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if container is not None:
        model.load_state_dict(container["state_dict"], strict=True)
        optimizer.load_state_dict(container["train_state"]["optimizer"])
        events.detail(f"Resumed {out} after epoch {start_epoch}")

    recipe = o.recipe_dict()
    recipe.update(paper_recipe=PAPER_NOTE)
    base_meta = {
        "recipe": recipe,
        "data": data.description,
        "preprocess": data.preprocess.to_dict(),
        "ulsam_maps": ulsam_shapes,
        **data.extra_meta,
    }
    if pretrained_report is not None:
        base_meta["pretrained"] = pretrained_report
    elif container is not None and "pretrained" in (container.get("meta") or {}):
        base_meta["pretrained"] = container["meta"]["pretrained"]
    if container is None and o.force and out.is_dir():  # start over, now that data and model are known to be fine
        for _, path in existing:
            path.unlink()
        for name in ("final.pt", "metrics.jsonl", "metrics.csv"):
            (out / name).unlink(missing_ok=True)
    events.detail(f"Training {model.config.describe()} on {device}: {data.description}")
    events.detail(f"Recipe: {_plural(o.epochs, 'epoch')}, batch {o.batch_size}, SGD lr {o.lr:.4g} momentum {o.momentum} "
                     f"wd {o.weight_decay:g}, " + (f"x{o.lr_gamma:.4g} per epoch" if o.arch == "mv2"
                                                   else f"/10 every {_plural(o.lr_step, 'epoch')}") + f", seed {o.seed}")

    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch + 1, o.epochs + 1):
        lr = lr_at(o, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(o.seed * 1_000_003 + epoch)
        torch.manual_seed(o.seed * 7919 + epoch)  # dropout
        order = torch.randperm(len(data.train), generator=gen)
        n_batches = steps_per_epoch(len(order), o.batch_size)
        model.train()
        t0 = time.perf_counter()
        run_loss, run_correct, run_seen, steps = 0.0, 0, 0, []
        phase = f"epoch {epoch}/{o.epochs}"
        events.progress(phase, 0, n_batches)
        try:
            for step, (images, labels) in enumerate(_batches(data.train, order, o.batch_size, o.workers, True), 1):
                if o.augment:
                    images = augment(images, gen)
                x = data.preprocess.normalize(images.to(device))
                labels = labels.to(device)
                logits = model(x)
                loss = loss_fn(logits, labels)
                if not torch.isfinite(loss):
                    raise UserError(f"The loss became {loss.item()} at epoch {epoch} step {step}; lower --lr "
                                    f"(now {lr:.4g}) and start again with --force.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                batch_loss = loss.item()
                run_loss += batch_loss * len(labels)
                run_correct += int((logits.detach().argmax(1) == labels).sum())
                run_seen += len(labels)
                if step == 1 or step % o.log_every == 0:
                    steps.append((step, batch_loss))
                events.progress(phase, step, n_batches, loss=run_loss / run_seen, acc=run_correct / run_seen)
        finally:
            events.progress(phase, n_batches, n_batches)
        train_seconds = time.perf_counter() - t0
        test_loss, test_acc, test_n = evaluate(model, data.test, data.preprocess, device, workers=o.workers,
                                               events=events)
        record = EpochRecord(epoch, lr, run_loss / run_seen, run_correct / run_seen, test_loss, test_acc,
                             round(time.perf_counter() - t0, 2), round(run_seen / train_seconds, 1), steps)
        history.append(record)
        train_state = {"epoch": epoch, "optimizer": _to_cpu(optimizer.state_dict()),
                       "history": [asdict(r) for r in history]}
        save_training_checkpoint(model, out / f"epoch_{epoch:03d}.pt", train_state, class_names=data.class_names,
                                 mean=data.preprocess.mean, std=data.preprocess.std, epoch=epoch,
                                 test_accuracy=test_acc, test_samples=test_n, **base_meta)
        write_metrics(out, history, o.metrics_format)
        if o.keep:
            for _, old in epoch_checkpoints(out)[:-o.keep]:
                old.unlink(missing_ok=True)
        events.emit("epoch", record=record, epochs=o.epochs)

    final = history[-1]
    seconds = time.perf_counter() - started
    prior = sum(r.seconds for r in history[: start_epoch])
    final_path = save_checkpoint(
        model.cpu().eval(), out / "final.pt", class_names=data.class_names, mean=data.preprocess.mean,
        std=data.preprocess.std, epoch=final.epoch, test_accuracy=final.test_acc, test_samples=_count(data.test),
        test_loss=final.test_loss, train_seconds=round(prior + seconds, 1),
        history=[r.to_row() for r in history], torch=str(torch.__version__), device=str(device), **base_meta)
    events.detail(f"Test top-1 {final.test_acc:.2%} on {_count(data.test)} images; wrote {final_path}")
    return TrainResult(out, final_path, history, final.test_acc, _count(data.test), seconds, start_epoch)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _count(dataset) -> int:
    return len(dataset)


def _load_pretrained(model: MobileNetULSAM, in_channels: int) -> str:
    from ulsam_deploy.data.resources import mv2_weights_path
    from ulsam_deploy.models.checkpoint import extract_state_dict

    path = mv2_weights_path()
    state, _ = extract_state_dict(read_checkpoint_file(path), path)
    if in_channels == 1:  # grey input: sum the RGB filters of the stem (same response to a grey image)
        state = dict(state)
        state["features.0.0.weight"] = state["features.0.0.weight"].sum(dim=1, keepdim=True)
    return load_pretrained(model, state).summary()


__all__ = ["PAPER_RECIPES", "EpochRecord", "TrainOptions", "TrainResult", "evaluate",
           "lr_at", "resolve_options", "train"]
