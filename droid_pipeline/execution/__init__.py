"""Running the steps over many episodes: plan, warm workers, SLURM, timing and progress."""

from importlib import resources
from pathlib import Path

# The bash driver (fan-out, signals, background uploader), shipped as package data so it runs
# without a checkout: ``bash DRIVER metadata|full [OPTIONS...]``.
DRIVER = Path(str(resources.files(__name__).joinpath("driver.sh")))
