"""`easc search`: run, or resume, an architecture search (see easc.search.loop)."""

from __future__ import annotations

import click


def _devices(value):
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def _stages(value):
    """`300,150` -> [300, 150]; anything else is a one-line error naming the flag."""
    from easc.search.config import ConfigError

    if value is None:
        return None
    try:
        stages = [int(v) for v in value.split(",")]
    except ValueError:
        stages = None
    if not stages or any(n < 1 for n in stages):
        raise ConfigError(f"--stages {value!r}: give networks per stage as positive integers, e.g. 300,150")
    return stages


@click.command("search")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="A TOML recipe; flags override it.")
@click.option("--dataset", default=None, help="digits (default), cifar10, cifar100, svhn, synthetic, or the path of "
              "an image folder (DIR/<class>/*.png, or DIR/train + DIR/test) or an .npz (x_train, y_train, ...).")
@click.option("--image-size", default=None, help="Image folders: resize to N or HxW [default: the most common size].")
@click.option("--augment", "augmentation", type=click.Choice(["crop-flip", "none"]), default=None,
              help="Image folders and .npz: training augmentation [default: none].")
@click.option("--skip-bad-images", is_flag=True, default=None, help="Leave out unreadable images instead of stopping.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--download", is_flag=True, default=None, help="Allow downloading the data set.")
@click.option("--out", type=click.Path(), default=None, help="Run folder to create [default: runs/search].")
@click.option("--resume", "resume", type=click.Path(file_okay=False), default=None,
              help="Continue the search in this run folder.")
@click.option("--strategy", type=click.Choice(["rl", "random"]), default=None, help="[default: rl]")
@click.option("--space", type=click.Choice(["plain", "densenet", "graph"]), default=None,
              help="[default: plain; graph when --start is a model file]")
@click.option("--start", default=None, help="Built-in start net or a model file (.onnx/.easir).")
@click.option("--parent", type=click.Choice(["start", "best"]), default=None,
              help="start: every child from its stage's start net (EAS); best: from the best so far (hill "
                   "climb) [default: start].")
@click.option("--stages", default=None, help="Networks per stage, e.g. 300,150: at each boundary the best "
              "network so far becomes the next stage's start net [default: one stage of --steps].")
@click.option("--stage-epochs", type=int, default=None,
              help="Further training of a new stage's start net [default: --epochs].")
@click.option("--steps", type=int, default=None,
              help="Controller steps [default: from --stages, else 3 on digits, 45 otherwise].")
@click.option("--children", type=int, default=None, help="Networks per step [default: 10].")
@click.option("--wider-actions", type=int, default=None, help="Net2Wider actions per network [default: 4].")
@click.option("--deeper-actions", type=int, default=None, help="Net2Deeper actions per network [default: 5].")
@click.option("--epochs", type=int, default=None, help="Child training epochs [default: 6 on digits, 20 otherwise].")
@click.option("--max-layers-per-block", type=int, default=None,
              help="Deepening stops in a block with this many layers (0: no limit) [default: 10 in the plain space].")
@click.option("--max-layers", type=int, default=None,
              help="Deepening stops at this many layer tokens in all (0: no limit) [default: 50 in the plain space].")
@click.option("--max-params", type=int, default=None, help="Mask actions that would exceed this many parameters.")
@click.option("--no-augment", "no_augment", is_flag=True, default=None,
              help="Train without the data set's augmentation (the paper's no-augmentation setting).")
@click.option("--widen-transitions/--no-widen-transitions", default=None,
              help="DenseNet space: widen the stem to 2x mean growth and transitions to 0.5x input after "
                   "each network's actions, as the released EAS code [default: on].")
@click.option("--widen-noise", type=float, default=None,
              help="Relative noise on widened copies, breaking their symmetry [default: 0.01; 0: exact].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None, help="[default: 0]")
@click.option("--workers", type=int, default=None, help="Worker processes training children [default: 1].")
@click.option("--threads", type=int, default=None, help="Torch CPU threads per worker [default: 1].")
@click.option("--device", default=None, help="cpu, cuda or cuda:N.")
@click.option("--devices", default=None, help="Comma-separated devices, one worker each (cuda:0,cuda:1).")
@click.option("--executor", type=click.Choice(["local", "process", "ray"]), default=None, help="[default: local]")
@click.option("--ray-address", default=None, help="Ray cluster address (auto, or host:port).")
@click.option("--quiet", is_flag=True, default=None, help="No progress output.")
def command(config, dataset, image_size, augmentation, skip_bad_images, data_dir, download, out, resume, strategy,
            space, start, parent, stages, stage_epochs, steps, children, wider_actions, deeper_actions, epochs,
            max_layers_per_block, max_layers, max_params, no_augment, widen_transitions, widen_noise, seed, workers,
            threads, device, devices, executor, ray_address, quiet):
    """Search architectures by growing a trained network with verified transformations."""
    from easc.search.config import build_config, load_config
    from easc.search.loop import Search, summary_json

    from .progress import SearchProgress

    if device and devices:
        raise click.UsageError("give --device or --devices, not both")
    overrides = dict(dataset=dataset, image_size=image_size, augmentation=augmentation,
                     skip_bad_images=skip_bad_images, data_dir=data_dir, download=download, strategy=strategy,
                     space=space, start=start, parent=parent, stages=_stages(stages), stage_epochs=stage_epochs,
                     max_layers_per_block=max_layers_per_block, max_layers=max_layers, max_params=max_params,
                     augment=False if no_augment else None, widen_transitions=widen_transitions,
                     steps=steps, children=children, wider_actions=wider_actions,
                     deeper_actions=deeper_actions, epochs=epochs, widen_noise=widen_noise, seed=seed, workers=workers, threads=threads,
                     devices=_devices(devices) or ([device] if device else None), executor=executor,
                     ray_address=ray_address, quiet=quiet)
    progress = SearchProgress(quiet=bool(quiet))
    if resume:
        if out or config:
            raise click.UsageError("--resume takes the run folder; it cannot be combined with --out or --config")
        search = Search.resume(resume, overrides, on_event=progress.event)
    else:
        tables = load_config(config) if config else None
        cfg = build_config(tables, overrides)
        search = Search.start(cfg, out or "runs/search", on_event=progress.event)
    try:
        with progress:
            summary = search.run()
    finally:
        search.close()
    click.echo(summary_json(summary))
