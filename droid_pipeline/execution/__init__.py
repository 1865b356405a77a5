"""Running the steps over many episodes: plan, warm workers, SLURM, timing and progress."""

from pathlib import Path

# The bash driver (fan-out, signals, background uploader), shipped as package data so it runs
# without a checkout: ``bash DRIVER metadata|full [OPTIONS...]``.
DRIVER = Path(__file__).with_name("driver.sh")
