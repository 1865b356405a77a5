"""Running the steps over many episodes: plan, warm workers, SLURM, timing and progress."""
