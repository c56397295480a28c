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
