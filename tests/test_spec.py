from __future__ import annotations

from typing import Any

import pytest

from cerebro import ETLSpec, MinibatchSpec, SpecError
from cerebro.spec import MinibatchMetrics, check_spec
from toy import ToyETL, ToySpec


def test_toy_specs_pass() -> None:
    check_spec(ToySpec(), MinibatchSpec)
    check_spec(ToyETL(), ETLSpec)


def test_missing_hook_with_near_miss() -> None:
    class Trian(MinibatchSpec):
        def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
            return {}

        def trian(
            self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any
        ) -> dict[str, float]:
            return {}

        def valtest(
            self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any
        ) -> dict[str, float]:
            return {}

    with pytest.raises(SpecError, match="found 'trian': a misspelling"):
        check_spec(Trian(), MinibatchSpec)


def test_val_test_alias_accepted() -> None:
    class Original(MinibatchSpec):
        def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
            return {}

        def train(
            self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any
        ) -> dict[str, float]:
            return {}

        def val_test(
            self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any
        ) -> dict[str, float]:
            return {"loss": 1.0}

    before = dict(vars(Original))
    spec = Original()
    for _ in range(3):  # every run_fit / run_test / run_predict checks the spec again
        check_spec(spec, MinibatchSpec)
        check_spec(Original(), MinibatchSpec)
    assert spec.valtest({}, None, {}, "cpu") == {"loss": 1.0}
    assert dict(vars(Original)) == before  # nothing is written onto the user's class


def test_val_test_signature_is_checked() -> None:
    class Original(MinibatchSpec):
        def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
            return {}

        def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
            return {}

        def val_test(self, model_object: Any, minibatch: Any) -> Any:
            return {}

    with pytest.raises(SpecError, match=r"Original.val_test takes \(model_object, minibatch\)"):
        check_spec(Original(), MinibatchSpec)


def test_default_metrics_agg_weights_by_batch_size() -> None:
    m = MinibatchMetrics({"loss": [1.0, 4.0]}, [3, 1])
    assert ToySpec().metrics_agg("train", {}, m) == {"loss": pytest.approx(7 / 4)}
    assert ToySpec().metrics_agg("train", {}, {"loss": [1.0, 4.0]}) == {"loss": 2.5}


def test_own_helper_methods_are_not_flagged() -> None:
    class Helpers(ToySpec):
        def predictor(self) -> None: ...

        def trainer(self) -> None: ...

    check_spec(Helpers(), MinibatchSpec)


def test_code_fingerprint_is_the_user_s_code_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade of Cerebro's base classes is no change of the user's code; an edit is."""
    from cerebro.spec import MinibatchSpec, code_fingerprint
    from toy import ToySpec

    before = code_fingerprint(ToySpec())
    monkeypatch.setattr(MinibatchSpec, "new_hook", lambda self: None, raising=False)
    monkeypatch.setattr(MinibatchSpec, "metrics_agg", lambda self, *a: {}, raising=True)
    assert code_fingerprint(ToySpec()) == before

    class Mine(ToySpec):
        pass

    unedited = code_fingerprint(Mine())

    def train(self: object, *a: object) -> object:  # the user edits their train
        return {"loss": 0.0}

    monkeypatch.setattr(Mine, "train", train, raising=False)
    assert code_fingerprint(Mine()) != unedited
