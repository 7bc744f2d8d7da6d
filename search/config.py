"""Search settings: defaults, TOML recipe files, and command-line overrides, in that order.

A recipe (see `configs/*.toml`) has a `[search]` table whose keys are the `easc search` options
with underscores (`wider_actions = 4`) and an optional `[final]` table with the schedule that
`easc train --config ... --final` uses for the found network. Unknown keys are errors, so a typo
does not silently run a different search.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A recipe or option that cannot run; the message names the file or option."""


@dataclass
class SearchConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: str | None = None  # image folders: resize to N or HxW; None: the size most images have
    augment: str | None = None  # image folders / .npz: crop-flip or none; None: none
    skip_bad_images: bool = False  # image folders: leave out unreadable files instead of stopping
    start: str | None = None  # a built-in start net or a model file; None: the data set's default
    space: str = "plain"
    strategy: str = "rl"
    steps: int | None = None  # None: the data set's default (small on digits)
    children: int = 10
    wider_actions: int | None = None  # None: the space's default (4 plain, 10 densenet)
    deeper_actions: int = 5
    inherit: bool = True  # children start from their parent's weights; False: re-initialised (a baseline)
    epochs: int | None = None  # child training epochs; None: the data set's default
    start_epochs: int | None = None  # training of the start net; None: as epochs
    batch_size: int = 64
    lr: float = 0.02
    weight_decay: float = 1e-4
    conv_widths: list | None = None  # None: the space's list for this data set
    fc_widths: list | None = None
    growth_rates: list | None = None  # densenet space
    kernels: list = field(default_factory=lambda: [1, 3, 5])
    widen_noise: float = 0.01  # relative noise on widened copies (breaks their symmetry; 0: exact widening)
    controller_lr: float = 2e-3
    entropy: float = 1e-5
    seed: int = 0
    workers: int = 1
    threads: int = 1  # torch CPU threads per worker: small nets train fastest on one
    devices: list | None = None  # e.g. ["cuda:0", "cuda:1"]; None: ["cpu"] or the --device
    executor: str = "local"  # local | process | ray
    ray_address: str | None = None
    quiet: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FINAL_DEFAULTS = {"epochs": 300, "lr": 0.1, "batch_size": 64, "weight_decay": 1e-4}
_FINAL_KEYS = {"epochs", "lr", "batch_size", "weight_decay", "momentum"}


def load_config(path) -> dict:
    """The raw tables of a recipe file, checked for unknown keys: {"search": {...}, "final": {...}}."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown_tables = sorted(set(data) - {"search", "final"})
    if unknown_tables:
        raise ConfigError(f"{path}: unknown table [{unknown_tables[0]}] (tables: [search], [final])")
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    for key in data.get("search", {}):
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r} in [search] (keys: {', '.join(sorted(known))})")
    for key in data.get("final", {}):
        if key not in _FINAL_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} in [final] (keys: {', '.join(sorted(_FINAL_KEYS))})")
    return {"search": dict(data.get("search", {})), "final": dict(data.get("final", {})), "path": str(path)}


def build_config(file_tables: dict | None, overrides: dict) -> SearchConfig:
    """Defaults, then the recipe's [search] table, then the command line's explicit options."""
    values = dict((file_tables or {}).get("search", {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SearchConfig(**values)
    except TypeError as e:
        raise ConfigError(f"bad search option: {e}") from None


def training_settings(file_tables: dict, final: bool = False) -> dict:
    """Training options for `easc train --config`: the [search] child schedule, or [final] with --final."""
    search = file_tables.get("search", {})
    out = {"dataset": search.get("dataset", "digits"), "data_dir": search.get("data_dir")}
    if final:
        out.update(FINAL_DEFAULTS)
        out.update(file_tables.get("final", {}))
    else:
        for key in ("epochs", "lr", "batch_size", "weight_decay"):
            if key in search:
                out[key] = search[key]
    return out
