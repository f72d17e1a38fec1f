"""Evaluation: the metrics, uncertainty (bootstrap, seeds), scoring a saved model, comparing two, the run folder
that holds every result, the thesis"s published numbers, the HTML report and the robustness study."""
from ..lazy import lazy_exports

_EXPORTS = {
    "compute_metrics": ".metrics",
    "tune_thresholds": ".metrics",
    "format_table": ".metrics",
    "paired_bootstrap": ".stats",
    "bootstrap_interval": ".stats",
    "seed_mean_std": ".stats",
    "format_comparison": ".compare",
    "format_evaluation": ".evaluate",
    "read_run": ".runs",
    "read_grid": ".runs",
    "find_runs": ".runs",
    "RunFolderError": ".runs",
    "write_report": ".report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
