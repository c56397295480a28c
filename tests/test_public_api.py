from __future__ import annotations

import cerebro


def test_exported_members() -> None:
    assert cerebro.__all__ == sorted(cerebro.__all__)
    assert cerebro.__all__ == [
        "CerebroError",
        "ETLSpec",
        "Experiment",
        "FitResult",
        "MinibatchSpec",
        "ParamsError",
        "SpecError",
        "UserCodeError",
        "WorkerError",
    ]
    for name in cerebro.__all__:
        assert getattr(cerebro, name).__module__.startswith("cerebro.")


def test_import_does_not_need_ray() -> None:
    import subprocess
    import sys

    code = "import sys, cerebro; assert 'ray' not in sys.modules, 'import cerebro loaded ray'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_worker_side_imports_stay_light() -> None:
    """A worker process imports the spec base classes and the worker, not the driver's
    modules: pandas alone costs each worker ~0.35 s of start-up."""
    import subprocess
    import sys

    code = (
        "import sys, cerebro, cerebro.worker, cerebro.engine._child; "
        "heavy = {'pandas', 'cerebro.experiment', 'cerebro.catalog'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_original_import_paths_give_the_same_classes() -> None:
    """Ported notebooks import from where the original Cerebro kept its classes."""
    from cerebro.etl.etl_spec import ETLSpec
    from cerebro.experiment import Experiment
    from cerebro.mop.minibatch_spec import MiniBatchSpec

    assert ETLSpec is cerebro.ETLSpec
    assert MiniBatchSpec is cerebro.MinibatchSpec
    assert Experiment is cerebro.Experiment
