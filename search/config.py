"""Search settings: defaults, TOML recipe files, and command-line overrides, in that order.

A recipe (see `configs/*.toml`) has a `[search]` table whose keys are the `easc search` options
with underscores (`wider_actions = 4`) and an optional `[final]` table with the schedule that
`easc train --config ... --final` uses for the found network.

Every value, from the file or from a flag, is checked against one schema (`SEARCH_SCHEMA`, `FINAL_SCHEMA`)
before anything is created: its type (an int is not a bool, a string is not a number), its range (finite,
positive, odd kernels...) and that its key exists. The error is one line naming the key and the file (or
the flag) it came from, so a typo or a quoted number never runs a different search or ends in a traceback.
"""

from __future__ import annotations

import dataclasses
import math
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
    image_size: str | int | None = None  # image folders: resize to N or "HxW"; None: the size most images have
    augmentation: str | None = None  # image folders / .npz: "crop-flip" or "none"; None: none (see augment)
    skip_bad_images: bool = False  # image folders: leave out unreadable files instead of stopping
    start: str | None = None  # a built-in start net or a model file; None: the data set's default
    space: str = "plain"
    strategy: str = "rl"
    parent: str = "start"  # start: every child from the stage's start net (EAS); best: hill climb (easc's variant)
    stages: list | None = None  # networks per stage, e.g. [300, 150]; None: one stage of `steps` steps
    stage_epochs: int | None = None  # further training of a new stage's start net; None: as epochs
    steps: int | None = None  # None: from the stages, else the data set's default (small on digits)
    children: int = 10
    wider_actions: int | None = None  # None: the space's default (4 plain, 10 densenet)
    deeper_actions: int = 5
    # None: 10 in the plain space (released EAS code), none in densenet; 0: none
    max_layers_per_block: int | None = None
    max_layers: int | None = None  # tokens in all; None: 50 in the plain space, none in densenet; 0: none
    max_params: int | None = None  # optional cap: widenings / deepenings that would exceed it are masked
    widen_transitions: bool = True  # densenet: stem = 2 x mean growth, transitions = 0.5 x input (released code)
    augment: bool = True  # the data set's training augmentation (False: the paper's no-augmentation setting)
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


# ------------------------------------------------------------------------------------------------ schema
# A rule checks one value and returns None when it is fine, else what it must be ("an integer >= 1").

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def integer(minimum: int, maximum: int | None = None):
    def rule(v):
        if maximum is None:
            return None if _is_int(v) and v >= minimum else f"an integer >= {minimum}"
        return None if _is_int(v) and minimum <= v <= maximum else f"an integer from {minimum} to {maximum}"
    return rule


def number(minimum: float, *, strict: bool = False):
    def rule(v):
        ok = _is_number(v) and math.isfinite(v) and (v > minimum if strict else v >= minimum)
        return None if ok else f"a finite number {'>' if strict else '>='} {minimum:g}"
    return rule


def below_one(v):
    return None if _is_number(v) and 0 <= v < 1 else "a number in [0, 1)"


def boolean(v):
    return None if isinstance(v, bool) else "true or false"


def text(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def choice(*options):
    def rule(v):
        return None if isinstance(v, str) and v in options else f"one of {', '.join(options)}"
    return rule


def int_list(*, odd: bool = False, increasing: bool = True):
    what = "a non-empty list of " + ("odd " if odd else "") + "positive integers" + \
        (", strictly increasing" if increasing else "")

    def rule(v):
        if not isinstance(v, (list, tuple)) or not v or not all(_is_int(x) and x >= 1 for x in v):
            return what
        if odd and any(x % 2 == 0 for x in v):
            return what
        if increasing and any(a >= b for a, b in zip(v, v[1:])):
            return what
        return None
    return rule


def text_list(v):
    return None if isinstance(v, (list, tuple)) and v and all(text(x) is None for x in v) else \
        "a non-empty list of strings"


def image_size(v):
    """N or "N" or "HxW" (users' image folders)."""
    if _is_int(v):
        return None if 1 <= v <= 4096 else "a size N or HxW from 1 to 4096"
    parts = v.lower().replace(" ", "").split("x") if isinstance(v, str) else []
    ok = 1 <= len(parts) <= 2 and all(p.isdigit() and 1 <= int(p) <= 4096 for p in parts)
    return None if ok else "a size N or HxW from 1 to 4096"


def optional(rule):
    def check(v):
        return None if v is None else rule(v)
    return check


SEARCH_SCHEMA = {
    "dataset": text,
    "data_dir": optional(text),
    "download": boolean,
    "start": optional(text),
    "image_size": optional(image_size),
    "augmentation": optional(choice("crop-flip", "none")),
    "skip_bad_images": boolean,
    "space": choice("plain", "densenet", "graph"),
    "strategy": choice("rl", "random"),
    "parent": choice("start", "best"),
    "stages": optional(int_list(increasing=False)),
    "stage_epochs": optional(integer(1)),
    "steps": optional(integer(1)),
    "children": integer(1),
    "wider_actions": optional(integer(0)),
    "deeper_actions": integer(0),
    "max_layers_per_block": optional(integer(0)),  # 0: no limit
    "max_layers": optional(integer(0)),
    "max_params": optional(integer(1)),
    "widen_transitions": boolean,
    "augment": boolean,
    "inherit": boolean,
    "epochs": optional(integer(1)),
    "start_epochs": optional(integer(1)),
    "batch_size": integer(1),
    "lr": number(0, strict=True),
    "weight_decay": number(0),
    "conv_widths": optional(int_list()),
    "fc_widths": optional(int_list()),
    "growth_rates": optional(int_list()),
    "kernels": int_list(odd=True),  # an identity kernel puts its 1 at the centre: only odd sizes have one
    "widen_noise": number(0),
    "controller_lr": number(0, strict=True),
    "entropy": number(0),
    "seed": integer(0, 2**32 - 1),  # numpy's and torch's seeds are 32-bit
    "workers": integer(1, 1024),
    "threads": integer(1, 1024),  # torch aborts the interpreter on absurd thread counts
    "devices": optional(text_list),
    "executor": choice("local", "process", "ray"),
    "ray_address": optional(text),
    "quiet": boolean,
}
assert set(SEARCH_SCHEMA) == {f.name for f in dataclasses.fields(SearchConfig)}

FINAL_SCHEMA = {
    "epochs": integer(1),
    "lr": number(0, strict=True),
    "batch_size": integer(1),
    "weight_decay": number(0),
    "momentum": below_one,
}
FINAL_DEFAULTS = {"epochs": 300, "lr": 0.1, "batch_size": 64, "weight_decay": 1e-4}
_FINAL_KEYS = set(FINAL_SCHEMA)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def validate(values: dict, origin: str | None = None, schema: dict = SEARCH_SCHEMA, table: str = "search") -> dict:
    """Check every key and value of `values` against `schema`.

    `origin` is the file the values come from (errors read "FILE: [search] lr = nan must be ..."); None
    means command-line flags ("--lr nan: must be ...").
    """
    for key, value in values.items():
        if key not in schema:
            where = origin or "options"
            raise ConfigError(f"{where}: unknown key {key!r} in [{table}] (keys: {', '.join(sorted(schema))})")
        problem = schema[key](value)
        if problem:
            if origin is None:
                raise ConfigError(f"{flag(key)} {_show(value)}: must be {problem}")
            raise ConfigError(f"{origin}: [{table}] {key} = {_show(value)} must be {problem}")
    return values


def _normalise(values: dict) -> dict:
    """Numbers where floats are meant (TOML `lr = 1` is an int), lists where lists are meant."""
    out = dict(values)
    for key in ("lr", "weight_decay", "widen_noise", "controller_lr", "entropy", "momentum"):
        if key in out and _is_number(out[key]):
            out[key] = float(out[key])
    for key in ("stages", "conv_widths", "fc_widths", "growth_rates", "kernels", "devices"):
        if isinstance(out.get(key), tuple):
            out[key] = list(out[key])
    return out


def load_config(path) -> dict:
    """The raw tables of a recipe file, checked against the schema: {"search": {...}, "final": {...}}."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown_tables = sorted(set(data) - {"search", "final"})
    if unknown_tables:
        raise ConfigError(f"{path}: unknown table [{unknown_tables[0]}] (tables: [search], [final])")
    for table in ("search", "final"):
        if table in data and not isinstance(data[table], dict):
            raise ConfigError(f"{path}: {table} = {_show(data[table])} must be a table ([{table}])")
    search = validate(dict(data.get("search", {})), str(path))
    final = validate(dict(data.get("final", {})), str(path), FINAL_SCHEMA, "final")
    return {"search": _normalise(search), "final": _normalise(final), "path": str(path)}


def build_config(file_tables: dict | None, overrides: dict) -> SearchConfig:
    """Defaults, then the recipe's [search] table, then the command line's explicit options, all checked."""
    path = (file_tables or {}).get("path", "config")
    values = dict((file_tables or {}).get("search", {}))
    validate(values, path)
    given = {k: v for k, v in overrides.items() if v is not None}
    validate(given)
    values.update(given)
    return SearchConfig(**_normalise(values))


def check_config(config: SearchConfig, where: str | None = None) -> SearchConfig:
    """Every field of an assembled config against the schema (a config built in Python, or read back on resume)."""
    values = _normalise(config.to_dict())
    validate(values, where)
    for key, value in values.items():
        setattr(config, key, value)
    return config


def training_settings(file_tables: dict, final: bool = False) -> dict:
    """Training options for `easc train --config`: the [search] child schedule, or [final] with --final."""
    search = file_tables.get("search", {})
    out = {"dataset": search.get("dataset", "digits"), "data_dir": search.get("data_dir"),
           "augment": search.get("augment", True),
           # users' data sets (image folders, .npz): how to read them, as the search reads them
           "image_size": search.get("image_size"), "augmentation": search.get("augmentation"),
           "skip_bad_images": search.get("skip_bad_images")}
    if final:
        out.update(FINAL_DEFAULTS)
        out.update(file_tables.get("final", {}))
    else:
        for key in ("epochs", "lr", "batch_size", "weight_decay"):
            if key in search:
                out[key] = search[key]
    return out
