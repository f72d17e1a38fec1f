"""Evaluation: the metrics, uncertainty (bootstrap, seeds), scoring a saved model, comparing two, the run folder
that holds every result, the thesis's published numbers, the HTML report and the robustness study."""
