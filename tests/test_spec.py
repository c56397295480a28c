from __future__ import annotations

from typing import Any

import pytest

from cerebro import ETLSpec, MinibatchSpec, SpecError
from cerebro.spec import MinibatchMetrics, check_spec
from toy import ToyETL, ToySpec


def test_toy_specs_pass() -> None:
    check_spec(ToySpec(), MinibatchSpec)
    check_spec(ToyETL(), ETLSpec)


def test_class_instead_of_instance() -> None:
    with pytest.raises(TypeError, match=r"pass ToySpec\(\) instead"):
        check_spec(ToySpec, MinibatchSpec)


def test_not_a_subclass() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError, match="subclass instance of cerebro.MinibatchSpec"):
        check_spec(Plain(), MinibatchSpec)


def test_missing_required_hook() -> None:
    class NoTrain(MinibatchSpec):
        def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
            return {}

        def valtest(
            self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any
        ) -> dict[str, float]:
            return {}

    with pytest.raises(SpecError, match=r"must define MinibatchSpec.train\(\)"):
        check_spec(NoTrain(), MinibatchSpec)


def test_misspelled_hook_is_named() -> None:
    class Typo(ToySpec):
        def metric_agg(self, mode: str, hyperparams: Any, metrics: Any) -> dict[str, float]:
            return {}

    with pytest.raises(SpecError, match="misspelling of the hook 'metrics_agg'"):
        check_spec(Typo(), MinibatchSpec)


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


def test_wrong_signature() -> None:
    class BadSig(ToySpec):
        def train(self, model_object: Any, minibatch: Any) -> dict[str, float]:  # type: ignore[override]
            return {}

    with pytest.raises(
        SpecError,
        match=r"BadSig.train takes \(model_object, minibatch\) but "
        r"Cerebro calls it as \(model_object, minibatch, hyperparams, device\)",
    ):
        check_spec(BadSig(), MinibatchSpec)


def test_row_prep_signature() -> None:
    class BadETL(ETLSpec):
        def row_prep(self, row: Any) -> Any:  # type: ignore[override]
            return row

    with pytest.raises(SpecError, match="BadETL.row_prep takes"):
        check_spec(BadETL(), ETLSpec)


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

    spec = Original()
    check_spec(spec, MinibatchSpec)
    assert spec.valtest({}, None, {}, "cpu") == {"loss": 1.0}


def test_default_metrics_agg_weights_by_batch_size() -> None:
    m = MinibatchMetrics({"loss": [1.0, 4.0]}, [3, 1])
    assert ToySpec().metrics_agg("train", {}, m) == {"loss": pytest.approx(7 / 4)}
    assert ToySpec().metrics_agg("train", {}, {"loss": [1.0, 4.0]}) == {"loss": 2.5}


def test_own_helper_methods_are_not_flagged() -> None:
    class Helpers(ToySpec):
        def predictor(self) -> None: ...

        def trainer(self) -> None: ...

    check_spec(Helpers(), MinibatchSpec)
