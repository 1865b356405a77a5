"""How many episodes each worker process takes: one batch for a single worker, a few per worker
for several (so the last ones end close together), never more than MAX_BATCH, an explicit
``--episodes-per-worker`` as given."""

from __future__ import annotations

import math

import pytest

from droid_pipeline.core.config import ConfigError
from droid_pipeline.execution.plan import MAX_BATCH, batch_size


@pytest.mark.parametrize("todo", [1, 2, 7, 24, 64, 65, 1000])
def test_a_single_worker_takes_the_run_in_one_batch_up_to_the_cap(todo):
    assert batch_size(todo, 1, None) == min(todo, MAX_BATCH)


@pytest.mark.parametrize("workers", [2, 3, 4, 16])
@pytest.mark.parametrize("todo", [1, 3, 8, 24, 100, 1000, 92_000])
def test_several_workers_each_get_a_few_batches_unless_capped(todo, workers):
    batch = batch_size(todo, workers, None)
    assert 1 <= batch <= MAX_BATCH
    processes = math.ceil(todo / batch)
    if todo >= workers:
        assert processes >= workers  # every worker gets work
    if batch < MAX_BATCH:
        assert processes <= 5 * workers  # at most four batches per worker, and the remainder's


def test_more_episodes_give_more_batches_per_worker():
    assert batch_size(24, 2, None) == 6  # two batches each
    assert math.ceil(200 / batch_size(200, 2, None)) > math.ceil(24 / batch_size(24, 2, None))


def test_an_explicit_batch_is_kept_and_checked():
    assert batch_size(24, 2, 5) == 5
    assert batch_size(3, 1, 100) == 100
    with pytest.raises(ConfigError, match="episodes-per-worker"):
        batch_size(24, 2, 0)
