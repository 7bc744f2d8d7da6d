"""`easc train MODEL --dataset NAME -o OUT`: train a model file and write the trained weights back.

`--final` is the final training of a found network (PAPER.md): the recipe's [final] schedule (default 300
epochs, lr 0.1 cosine), weights re-initialised (a fresh start: the search's inherited weights were tuned for
short schedules) and all training images, train + validation (the released code's default: on CIFAR-10 all
50,000). `--keep-weights` fine-tunes the inherited weights instead; `--hold-out-validation` keeps the
validation images out of training (and reports their accuracy). The command prints which one ran.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from .common import fail


def split_record_path(output) -> str:
    """Where `train -o OUTPUT` records its split of a user's data set (a search keeps it in RUN/split.json)."""
    return f"{output}.split.json"


@click.command("train")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--dataset", default=None, help="digits, cifar10, cifar100, svhn, synthetic, or the path of an image "
              "folder or an .npz [default: the recipe's, else digits].")
@click.option("--image-size", default=None, help="Image folders: resize to N or HxW [default: the most common size].")
@click.option("--augment", "augmentation", type=click.Choice(["crop-flip", "none"]), default=None,
              help="Image folders and .npz: training augmentation [default: none].")
@click.option("--skip-bad-images", is_flag=True, help="Leave out unreadable images instead of stopping.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder with the data set's files.")
@click.option("--download", is_flag=True, help="Allow downloading the data set into --data-dir.")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: 20, or the config's].")
@click.option("--batch-size", type=int, default=None, help="Batch size [default: 64].")
@click.option("--lr", type=float, default=None, help="Initial learning rate, cosine-decayed to 0 [default: 0.02].")
@click.option("--weight-decay", type=float, default=None, help="L2 weight decay [default: 1e-4].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="A TOML recipe (configs/*.toml); flags override it.")
@click.option("--final", is_flag=True, help="Final training of a found network: the recipe's [final] schedule "
              "(default 300 epochs, lr 0.1), fresh weights, train + validation images.")
@click.option("--keep-weights", is_flag=True, help="With --final: train the model's own weights, not fresh ones.")
@click.option("--hold-out-validation", is_flag=True,
              help="With --final: keep the validation images out of training and report their accuracy.")
@click.option("--no-augment", "no_augment", is_flag=True, help="Train without the data set's augmentation.")
@click.option("--threads", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="CPU threads for torch (small nets train fastest on one).")
@click.option("--quiet", is_flag=True, help="No per-epoch lines.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Trained model (.onnx/.easir). With an image folder or .npz, OUTPUT.split.json beside it records "
              "which image went to which split.")
def command(model, dataset, image_size, augmentation, skip_bad_images, data_dir, download, epochs, batch_size, lr,
            weight_decay, seed, device, config, final, keep_weights, hold_out_validation, no_augment, threads, quiet,
            output):
    """Train MODEL on a data set; print validation/test accuracy and a closing JSON line."""
    from easc.backends.formats import check_save_path, load_model, save_model
    from easc.backends.torch import to_module, write_back
    from easc.backends.torch.data import load_dataset
    from easc.backends.torch.train import TrainConfig, TrainConfigError, resolve_device, train_module

    from easc.search.config import FINAL_DEFAULTS, load_config, training_settings

    settings, augment = {}, True
    if config:
        settings = training_settings(load_config(config), final=final)
        recipe_dataset, recipe_data_dir = settings.pop("dataset"), settings.pop("data_dir")
        augment = settings.pop("augment")
        dataset, data_dir = dataset or recipe_dataset, data_dir or recipe_data_dir  # flags override the recipe
        recipe_image_size, recipe_augmentation = settings.pop("image_size"), settings.pop("augmentation")
        recipe_skip = settings.pop("skip_bad_images")
        image_size = image_size if image_size is not None else recipe_image_size
        augmentation = augmentation if augmentation is not None else recipe_augmentation
        skip_bad_images = skip_bad_images or bool(recipe_skip)
    elif final:
        settings = dict(FINAL_DEFAULTS)
    if (keep_weights or hold_out_validation) and not final:
        fail("--keep-weights and --hold-out-validation only change --final training; add --final")
    augment = augment and not no_augment
    dataset = dataset or "digits"
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("epochs", "batch_size"):
        if key in settings and settings[key] < 1:
            fail(f"--{key.replace('_', '-')} must be at least 1, got {settings[key]}")
    if output:
        check_save_path(output)
        if Path(split_record_path(output)).is_dir():  # the folder itself was checked with the output
            fail(f"{split_record_path(output)}: is a folder (train -o writes the split record there)")
    if threads < 1:
        fail(f"--threads must be at least 1, got {threads}")
    if resolve_device(device).type == "cpu":
        import torch

        torch.set_num_threads(threads)
    graph = load_model(model)
    options = {k: v for k, v in (("image_size", image_size), ("augment", augmentation),
                                 ("skip_bad_images", skip_bad_images or None)) if v is not None}
    data = load_dataset(dataset, data_dir, seed=seed, download=download, **options)
    if not augment:
        data.augment = "none"
    if len(graph.inputs) != 1:
        fail(f"{model}: training needs a model with one input, it has {len(graph.inputs)}")
    inp = graph.inputs[0]
    if inp.type.sample_shape != tuple(data.input_shape):
        fail(f"{model}: input {inp.name!r} takes {inp.type.sample_shape} but {dataset} images are "
             f"{tuple(data.input_shape)}")
    out_node = graph.node(next(iter(graph.outputs.values())))
    if out_node.type.rank != 2 or out_node.type.channels != data.num_classes:
        fail(f"{model}: output {out_node.name!r} is {out_node.type} but {dataset} has {data.num_classes} classes")
    try:
        cfg = TrainConfig(seed=seed, device=device, quiet=True, **settings)
    except TrainConfigError as e:  # "TrainConfig.lr = -1.0: ..." -> "--lr = -1.0: ...": name the flag the user typed
        fail(re.sub(r"TrainConfig\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e)))
    protocol = None
    if final:
        import numpy as np

        from easc.search.loop import reinitialised

        if not keep_weights:
            graph = reinitialised(graph, np.random.default_rng(seed))
        n_train, n_val = len(data.y_train), len(data.y_val)
        if not hold_out_validation and n_val:
            import torch

            data.x_train, data.y_train = torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val])
            data.x_val, data.y_val = data.x_val[:0], data.y_val[:0]
        protocol = {"weights": "kept" if keep_weights else "reinitialised",
                    "data": "train" if hold_out_validation or not n_val else "train+validation",
                    "train_images": len(data.y_train), "augment": data.augment}
        weights = "the model's own weights (--keep-weights)" if keep_weights else \
            f"fresh weights (re-initialised, seed {seed})"
        images = (f"train; {n_val:,} validation images held out" if protocol["data"] == "train" else
                  f"train {n_train:,} + validation {n_val:,}; nothing held out")
        click.echo(f"final training: {weights}, on {len(data.y_train):,} images ({images}), {cfg.epochs} epochs "
                   f"at lr {cfg.lr}, augmentation {data.augment}")
    module = to_module(graph)

    def on_epoch(epoch, loss, val_acc):
        if quiet:
            return
        shown = "" if val_acc != val_acc else f", val acc {val_acc:.4f}"  # NaN: no validation images
        click.echo(f"epoch {epoch}/{cfg.epochs}: loss {loss:.4f}{shown}")

    result = train_module(module, data, cfg, on_epoch=on_epoch)
    trained = write_back(graph, module)
    if output:
        save_model(trained, output)
        click.echo(f"wrote {output}")
        if data.split_record is not None:  # users' data: which file / array row trained, validated and tested
            from easc.ir.serialize import atomic_write_bytes

            atomic_write_bytes(split_record_path(output), json.dumps(data.split_record).encode())
            click.echo(f"wrote {split_record_path(output)}")
    val_acc = None if result.val_acc != result.val_acc else round(result.val_acc, 6)  # NaN: none held out
    summary = {"val_acc": val_acc, "test_acc": round(result.test_acc, 6), "epochs": result.epochs,
               "seconds": round(result.seconds, 2)}
    if protocol is not None:
        summary["final"] = protocol
    click.echo(json.dumps(summary))
