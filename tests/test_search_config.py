"""Search configs are checked against one schema, file and flags alike, before anything is created.

Each bad value ends in one line on stderr naming the key and the file (or the flag), exit code 2, no traceback
and no run folder, so a rerun with the same --out works once the value is fixed.
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from easc.cli.main import main
from easc.search.config import ConfigError, SearchConfig, build_config, load_config
from easc.search.loop import resolve_defaults

BAD_RECIPES = {  # [search] lines -> the key the error must name
    "quoted steps": ('steps = "3"', "steps", "an integer >= 1"),
    "quoted batch size": ('batch_size = "64"', "batch_size", "an integer >= 1"),
    "fractional children": ("children = 2.5", "children", "an integer >= 1"),
    "numeric dataset": ("dataset = 5", "dataset", "a non-empty string"),
    "zero conv width": ("conv_widths = [0]", "conv_widths", "positive integers"),
    "negative conv width": ("conv_widths = [-8]", "conv_widths", "positive integers"),
    "even kernel": ("kernels = [2]", "kernels", "odd"),
    "inherit as a word": ('inherit = "no"', "inherit", "true or false"),
    "infinite controller lr": ("controller_lr = inf", "controller_lr", "a finite number > 0"),
    "boolean epochs": ("epochs = true", "epochs", "an integer >= 1"),
    "nan lr": ("lr = nan", "lr", "a finite number > 0"),
    "negative lr": ("lr = -1", "lr", "a finite number > 0"),
    "unknown parent": ('parent = "worst"', "parent", "one of start, best"),
    "zero-network stage": ("stages = [300, 0]", "stages", "positive integers"),
    "negative layer limit": ("max_layers_per_block = -1", "max_layers_per_block", "an integer >= 0"),
    "string augment": ('augment = "false"', "augment", "true or false"),
    "absurd threads": ("threads = 100000", "threads", "an integer from 1 to 1024"),
    "absurd workers": ("workers = 5000", "workers", "an integer from 1 to 1024"),
    "seed past 32 bits": ("seed = 4294967296", "seed", "an integer from 0 to 4294967295"),
}


def easc(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    return line


@pytest.mark.parametrize("line, key, rule", BAD_RECIPES.values(), ids=BAD_RECIPES.keys())
def test_a_recipe_value_of_the_wrong_type_or_range_fails_in_one_line_naming_key_and_file(tmp_path, line, key, rule):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"[search]\n{line}\n")
    out = tmp_path / "run"

    error = one_line_error(easc("search", "--config", recipe, "--out", out))

    assert str(recipe) in error and f"[search] {key} = " in error and rule in error, error
    assert not out.exists()


def test_a_fixed_recipe_reruns_with_the_same_out_after_a_rejected_one(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[search]\nlr = nan\n")
    out = tmp_path / "run"
    one_line_error(easc("search", "--config", recipe, "--out", out))
    recipe.write_text("[search]\nlr = 0.02\nsteps = 1\nchildren = 1\nepochs = 1\nwider_actions = 0\n"
                      "deeper_actions = 1\nquiet = true\n")

    result = easc("search", "--config", recipe, "--out", out)

    assert result.exit_code == 0, result.output
    assert (out / "search.sqlite").is_file()


@pytest.mark.parametrize("table", ["search = 3", "final = \"x\""])
def test_a_table_that_is_not_a_table_fails_in_one_line(tmp_path, table):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"{table}\n")
    error = one_line_error(easc("search", "--config", recipe, "--out", tmp_path / "run"))
    assert str(recipe) in error and "must be a table" in error


def test_an_unknown_key_and_a_bad_final_value_name_the_file_and_table(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[search]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"recipe.toml: unknown key 'epoch' in \[search\]"):
        load_config(recipe)
    recipe.write_text("[final]\nepochs = \"300\"\n")
    with pytest.raises(ConfigError, match=r"recipe.toml: \[final\] epochs = '300' must be an integer >= 1"):
        load_config(recipe)


BAD_FLAGS = {
    "nan lr flag": (["--widen-noise", "nan"], r"--widen-noise nan: must be a finite number >= 0"),
    "zero children flag": (["--children", "0"], r"--children 0: must be an integer >= 1"),
    "bad stages flag": (["--stages", "300,x"], r"--stages '300,x': give networks per stage"),
    "negative max layers flag": (["--max-layers", "-1"], r"--max-layers -1: must be an integer >= 0"),
    "zero max params flag": (["--max-params", "0"], r"--max-params 0: must be an integer >= 1"),
    "zero stage epochs flag": (["--stage-epochs", "0"], r"--stage-epochs 0: must be an integer >= 1"),
    "absurd threads flag": (["--threads", "100000"], r"--threads 100000: must be an integer from 1 to 1024"),
}


@pytest.mark.parametrize("flags, message", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_a_bad_flag_fails_in_one_line_naming_it_before_the_run_folder_exists(tmp_path, flags, message):
    out = tmp_path / "run"
    error = one_line_error(easc("search", "--out", out, *flags))
    assert re.search(message, error), error
    assert not out.exists()


def test_a_flag_overrides_a_recipe_and_both_are_checked(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[search]\nlr = 1\nstages = [300, 150]\n")
    config = build_config(load_config(recipe), {"children": 5})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.stages == [300, 150] and config.children == 5
    assert resolve_defaults(config).steps == 60 + 30  # ceil(300 / 5) + ceil(150 / 5)


def test_a_config_built_in_python_is_checked_too():
    with pytest.raises(ConfigError, match=r"--epochs true: must be an integer >= 1"):
        resolve_defaults(SearchConfig(epochs=True))
    with pytest.raises(ConfigError, match=r"--kernels \[2\]: must be"):
        resolve_defaults(SearchConfig(kernels=[2]))


def test_every_recipe_passes_the_schema_and_states_the_papers_protocol():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))
    assert {p.name for p in recipes} >= {"cifar10_plain.toml", "cifar10_densenet.toml",
                                         "cifar10_densenet_noaug.toml", "svhn_plain.toml"}
    for path in recipes:
        config = resolve_defaults(build_config(load_config(path), {}))
        assert config.parent == "start" and config.stages == [300, 150] and config.steps == 45, path
        assert config.augment is (path.name != "cifar10_densenet_noaug.toml")
