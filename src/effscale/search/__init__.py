"""The scaling lab: search alpha, beta, gamma on your data, study compound vs single-dimension
scaling at matched MACs, and the demo that runs it all."""
from .coefficients import SearchConfig, search
from .demo import run_demo
from .family import LAB_BASE, lab_base, resolve_base
from .proxy import BUDGETS, ProxyBudget, train_proxy
from .strategies import STRATEGIES, match
from .study import StudyConfig, run_study
from .task import Task, load_task

__all__ = [
    "BUDGETS", "LAB_BASE", "ProxyBudget", "STRATEGIES", "SearchConfig", "StudyConfig", "Task", "lab_base",
    "load_task", "match", "resolve_base", "run_demo", "run_study", "search", "train_proxy",
]
