"""The oracle's grid, without measuring it: points the planner could not propose are refused up front, and
a worker's trials survive the trip through JSON into the parent's study unchanged."""
import json

import optuna
import pytest
from helpers import needs_weights

from bench.oracle import GRIDS, space_and_points, unsearchable
from bench.oracle_grid import _from_record, _trial_record

pytestmark = needs_weights("digits-unet")


@pytest.fixture(scope="module")
def pipe():
    from planner.models import load_pipeline

    return load_pipeline("digits-unet")


def test_both_grids_are_searchable(pipe):
    for name, grid in GRIDS.items():
        space, points = space_and_points(pipe, grid)
        assert unsearchable(pipe, space, points) is None, name
    assert len(space_and_points(pipe, GRIDS["large"])[1]) == 216


@pytest.mark.parametrize("change, message", [({"steps": (4, 7)}, "space.steps: 7"),
                                             ({"intervals": (0, 6)}, "space.deepcache.interval: 6"),
                                             ({"samplers": ("ddim", "heun")}, "space.sampler: 'heun'")])
def test_a_point_outside_the_planners_space_is_named(pipe, change, message):
    space, points = space_and_points(pipe, dict(GRIDS["default"], **change))
    assert message in unsearchable(pipe, space, points)


def test_trial_record_round_trip():
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial({"sampler": "unipc", "steps": 4})

    def objective(trial):
        trial.suggest_categorical("sampler", ["ddim", "unipc"])
        trial.suggest_categorical("steps", [4, 8])
        trial.set_user_attr("feasible", True)
        trial.set_constraint("fid+2", -0.5)
        return 0.1

    study.optimize(objective, n_trials=1)
    frozen = study.trials[0]
    again = _from_record(json.loads(json.dumps(_trial_record(frozen))))
    assert (again.params, again.value, again.state) == (frozen.params, frozen.value, frozen.state)
    assert again.user_attrs == frozen.user_attrs and again.constraints == frozen.constraints
