"""Training, evaluation, transfer and distillation (see trainer.py for the determinism contract)."""
from .evaluate import evaluate, evaluate_weights
from .recipe import RECIPES, Recipe, get_recipe, quick_spec, regularisation
from .trainer import TrainConfig, TrainingDiverged, distillation_loss, train

__all__ = ["RECIPES", "Recipe", "TrainConfig", "TrainingDiverged", "distillation_loss", "evaluate",
           "evaluate_weights", "get_recipe", "quick_spec", "regularisation", "train"]
