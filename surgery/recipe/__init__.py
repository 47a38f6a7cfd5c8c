"""Recipes: strict YAML parsing and the `surgery run` driver."""
from surgery.recipe.run import run_recipe
from surgery.recipe.schema import Recipe, parse

__all__ = ["Recipe", "parse", "run_recipe"]
