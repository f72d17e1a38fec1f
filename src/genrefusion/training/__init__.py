"""Training: the one training loop, an experiment (data -> features -> head -> thresholds -> metrics), the thesis
grid, worker processes, experiment tracking, end-to-end mode and knowledge distillation."""
