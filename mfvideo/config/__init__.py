from mfvideo.config.recipe import (
    RecipeError,
    load_recipe,
    load_recipe_or_exit,
    recipe_from_text,
    recipe_to_yaml,
    save_recipe,
)
from mfvideo.config.schema import BatchSplit, Recipe, derive_batch_split

__all__ = [
    "BatchSplit",
    "Recipe",
    "RecipeError",
    "derive_batch_split",
    "load_recipe",
    "load_recipe_or_exit",
    "recipe_from_text",
    "recipe_to_yaml",
    "save_recipe",
]
