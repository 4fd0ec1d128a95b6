"""Recipes and command lines: typed options declared once (options), the recipe's sections
(recipe), the checks of a whole recipe (checks), and the one parser every command uses (parse)."""

from hfgpt.config.checks import cautions
from hfgpt.config.options import option
from hfgpt.config.parse import Command, Parsed, command, load_recipe, parse_command
from hfgpt.config.recipe import (KEYS, SECTIONS, DataConfig, HubConfig, LogConfig, ModelConfig, OptimConfig, Recipe,
                                 SystemConfig, TrainConfig, auto_start, keys_of_step, keys_that_shape,
                                 tracker_names)

__all__ = ["option", "Command", "Parsed", "command", "load_recipe", "parse_command", "KEYS", "SECTIONS", "DataConfig",
           "HubConfig", "LogConfig", "ModelConfig", "OptimConfig", "Recipe", "SystemConfig", "TrainConfig", "cautions",
           "keys_of_step", "keys_that_shape", "tracker_names", "auto_start"]
