"""Recipes: YAML validated against the engines' configs, and the `surgery run` driver."""
from surgery.recipe.schema import Recipe, parse

__all__ = ["Recipe", "parse", "run_recipe"]


def __getattr__(name: str):
    if name == "run_recipe":
        from surgery.recipe.run import run_recipe

        return run_recipe
    raise AttributeError(name)
