"""Public names stay where users import them from after modules are split."""

from __future__ import annotations

import pytest

import aptune


def test_prepare_is_one_function_under_every_documented_path():
    from aptune.prepare import prepare_
    from aptune.trainer import prepare_ as trainer_prepare

    assert aptune.prepare_ is prepare_ is trainer_prepare


def test_old_controller_path_of_prepare_warns_and_still_works():
    import aptune.controller as controller

    with pytest.warns(DeprecationWarning, match="aptune.prepare_"):
        moved = controller.prepare_
    assert moved is aptune.prepare_


def test_controller_module_refuses_unknown_names():
    import aptune.controller as controller

    with pytest.raises(AttributeError, match="no_such_name"):
        controller.no_such_name  # noqa: B018


def test_bench_plan_and_training_names_are_reexported_where_documented():
    import aptune.bench as bench
    from aptune.bench.plan import Job, plan_jobs
    from aptune.bench.training import StepClock

    assert bench.Job is Job and bench.plan_jobs is plan_jobs
    # the methods module uses the shared training parts rather than copies of them
    import aptune.bench.methods as methods

    assert methods.StepClock is StepClock
