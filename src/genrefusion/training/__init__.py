"""Training: the one training loop, an experiment (data -> features -> head -> thresholds -> metrics), the thesis
grid, worker processes, experiment tracking, end-to-end mode and knowledge distillation."""
from ..lazy import lazy_exports

_EXPORTS = {
    "fit": ".train",
    "run_experiment": ".experiment",
    "run_grid": ".grid",
    "GridSpec": ".grid",
    "format_grid_tables": ".grid",
    "run_distill": ".distill",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
