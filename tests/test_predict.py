"""predict: online models per key and for the whole stream, test-then-train, checkpointed with the job."""

from __future__ import annotations

import math
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import millstream as ms
from conftest import collect
from millstream.testing import ManualClock, TestSource, TransactionalCollectSink

river = pytest.importorskip("river")
from river import anomaly, compose, linear_model, preprocessing  # noqa: E402

pytestmark = pytest.mark.usefixtures("exec_mode")


def regression_records(n: int = 400, keys: int = 3, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(keys)
        a, b = rng.uniform(-1, 1), rng.uniform(0, 5)
        out.append({"k": f"key-{k}", "a": a, "b": b, "y": (k + 1) * a - 0.5 * b + rng.gauss(0, 0.1), "ts": i})
    return out


def classification_records(n: int = 400, seed: int = 2) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(2)
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        label = (a + (1 if k else -1) * b) > 0
        out.append({"k": k, "a": a, "b": b, "label": label, "ts": i})
    return out


def by_hand(records: list[dict[str, Any]], make: Any, key: Any, features: list[str], target: str | None,
            method: str, field: str) -> list[dict[str, Any]]:
    """The test-then-train loop, written out: one model per key, predict, then learn."""
    models: dict[Any, Any] = {}
    out = []
    for r in records:
        k = key(r)
        if k not in models:
            models[k] = make()
        model = models[k]
        x = {f: r[f] for f in features}
        out.append({**r, field: getattr(model, method)(x)})
        if target is None:
            model.learn_one(x)
        elif r[target] is not None:
            model.learn_one(x, r[target])
    return out


def per_key(rows: list[dict[str, Any]], key: str = "k") -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row[key]].append(row)
    return dict(out)


def run(records: list[dict[str, Any]], build: Any) -> list[dict[str, Any]]:
    flow = ms.Flow("predict")
    out = collect(build(flow.source(TestSource(records, chunk=16))))
    flow.run()
    return list(out.values)


# -- against the hand-written loop ----------------------------------------------------


def test_linear_regression_per_key_equals_the_loop_by_hand() -> None:
    records = regression_records()
    model = linear_model.LinearRegression(intercept_lr=0.05)
    got = run(records, lambda s: s.key_by("k").predict(model, features=["a", "b"], target="y"))
    expected = by_hand(records, model.clone, lambda r: r["k"], ["a", "b"], "y", "predict_one", "prediction")
    assert per_key(got) == per_key(expected)
    assert len(got) == len(records)
    assert model.weights == {}  # the model given is a prototype: each key trained a clone
    # and it learned something: each key's late predictions beat its early ones
    for rows in per_key(got).values():
        def err(part: list[dict[str, Any]]) -> float:
            return sum(abs(r["prediction"] - r["y"]) for r in part) / len(part)

        assert err(rows[-30:]) < 0.75 * err(rows[:30])


def test_a_pipeline_classifier_gives_probabilities_and_labels() -> None:
    records = classification_records()

    def make() -> Any:
        return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())

    proba = run(records, lambda s: s.key_by("k").predict(make, features=["a", "b"], target="label", output="proba"))
    labels = run(records, lambda s: s.key_by("k").predict(make(), features=["a", "b"], target="label"))
    key = lambda r: r["k"]  # noqa: E731
    assert per_key(proba) == per_key(by_hand(records, make, key, ["a", "b"], "label", "predict_proba_one", "proba"))
    assert per_key(labels) == per_key(by_hand(records, make, key, ["a", "b"], "label", "predict_one", "prediction"))
    assert all(math.isclose(sum(r["proba"].values()), 1.0) for r in proba if r["proba"])
    late = [r for r in labels if r["ts"] >= 300]
    assert sum(r["prediction"] == r["label"] for r in late) / len(late) > 0.85  # it learns each key's boundary


def test_a_global_model_sees_every_record() -> None:
    records = regression_records(keys=1)
    got = run(records, lambda s: s.predict(linear_model.LinearRegression(), features=["a", "b"], target="y"))
    expected = by_hand(records, linear_model.LinearRegression, lambda r: 0, ["a", "b"], "y", "predict_one",
                       "prediction")
    assert got == expected


def test_half_space_trees_score_per_key_and_flag_the_outlier() -> None:
    rng = random.Random(3)
    records = [{"k": i % 2, "x": rng.uniform(0.4, 0.6), "y": rng.uniform(0.4, 0.6)} for i in range(600)]
    records[501] = {"k": 1, "x": 0.99, "y": 0.01}
    model = anomaly.HalfSpaceTrees(n_trees=5, height=6, window_size=50, seed=42)
    got = run(records, lambda s: s.key_by("k").predict(model, features=["x", "y"], output="score"))
    expected = by_hand(records, model.clone, lambda r: r["k"], ["x", "y"], None, "score_one", "score")
    assert per_key(got) == per_key(expected)
    odd = [r for r in got if r["k"] == 1]
    top = max(odd[100:], key=lambda r: r["score"])
    assert (top["x"], top["y"]) == (0.99, 0.01)


def test_features_and_target_as_functions_and_unlabelled_records() -> None:
    records = regression_records(200)
    for i, r in enumerate(records):
        if i % 3 == 0:
            r["y"] = None  # no label yet: predicted, not learned
    got = run(records, lambda s: s.key_by("k").predict(
        linear_model.LinearRegression, features=lambda r: {"a": r["a"], "b": r["b"]},
        target=lambda r: r["y"], output="prediction", name="forecast"))
    expected = by_hand(records, linear_model.LinearRegression, lambda r: r["k"], ["a", "b"], "y", "predict_one",
                       "prediction")
    assert per_key(got) == per_key(expected)


def test_learn_false_only_predicts_with_a_model_trained_elsewhere() -> None:
    trained = linear_model.LinearRegression()
    for r in regression_records(300, keys=1):
        trained.learn_one({"a": r["a"], "b": r["b"]}, r["y"])
    import copy

    records = regression_records(50, keys=2, seed=9)
    got = run(records, lambda s: s.key_by("k").predict(lambda: copy.deepcopy(trained), features=["a", "b"],
                                                       learn=False))
    assert [r["prediction"] for r in got] == [trained.predict_one({"a": r["a"], "b": r["b"]}) for r in records]


def test_a_missing_feature_is_a_step_error_naming_the_step_and_key() -> None:
    records = [{"k": "a", "a": 1.0, "b": 2.0, "y": 1.0}, {"k": "b", "a": 1.0, "y": 2.0}]
    with pytest.raises(ms.StepError, match="forecast") as info:
        run(records, lambda s: s.key_by("k").predict(linear_model.LinearRegression(), features=["a", "b"],
                                                     target="y", name="forecast"))
    assert info.value.key == "b" and isinstance(info.value.__cause__, KeyError)


# -- checkpoints ----------------------------------------------------------------------


class TickingClock(ManualClock):
    """Processing time that moves 5 ms each time it is read: periodic checkpoints happen, deterministically."""

    def now_ms(self) -> int:
        self.advance(5)
        return super().now_ms()


def test_models_are_checkpointed_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    records = regression_records(1_500, keys=4)

    def build(sink: Any, crash_at: int | None) -> ms.Flow:
        def maybe_crash(r: dict[str, Any]) -> dict[str, Any]:
            if r["ts"] == crash_at:
                raise KeyboardInterrupt  # stops the run as a crash would: no final checkpoint
            return r

        flow = ms.Flow("predict-recovery")
        src = flow.source(ms.connectors.memory.read(records), watermark=ms.WatermarkStrategy.bounded(0, timestamp="ts"))
        keyed = src.map(maybe_crash, name="maybe-crash").key_by("k")
        keyed.predict(compose.Pipeline(preprocessing.StandardScaler(), linear_model.LinearRegression()),
                      features=["a", "b"], target="y", name="model").sink(sink)
        return flow

    reference = TransactionalCollectSink()
    build(reference, None).run()
    sink = TransactionalCollectSink()
    cfg = {"checkpoint_dir": tmp_path / "ck", "checkpoint_interval": 100, "clock": TickingClock(), "max_chunk": 64,
           "guarantee": "exactly-once"}
    first = build(sink, 900).run(**cfg)
    assert first.interrupted
    again = build(sink, None).run(**cfg)
    assert again.checkpoints is not None and again.checkpoints.restored_from is not None
    assert again.records_read < len(records)  # resumed, not started over
    assert sorted(map(repr, sink.values)) == sorted(map(repr, reference.values))


# -- checks when built ----------------------------------------------------------------


def keyed() -> ms.KeyedStream:
    return ms.Flow("bad").source(TestSource([{"k": 1, "a": 1.0, "y": 1.0}])).key_by("k")


class NoLearn:
    def predict_one(self, x: dict[str, Any]) -> float:
        return 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": 3, "features": ["a"]}, "model factory"),
    ({"model": lambda n: None, "features": ["a"]}, "no arguments"),
    ({"model": linear_model.LinearRegression(), "features": "a"}, "list of field names"),
    ({"model": linear_model.LinearRegression(), "features": ["a", 2]}, "field names"),
    ({"model": linear_model.LinearRegression(), "features": ["a", "a"]}, "twice"),
    ({"model": linear_model.LinearRegression(), "features": lambda: {}}, "one argument"),
    ({"model": linear_model.LinearRegression(), "features": ["a"], "target": 5}, "target"),
    ({"model": linear_model.LinearRegression(), "features": ["a"], "output": "probability"}, "one of"),
    ({"model": linear_model.LinearRegression(), "features": ["a"], "output": "score"}, "score_one"),
    ({"model": linear_model.LinearRegression(), "features": ["a"]}, "needs a target"),
    ({"model": anomaly.HalfSpaceTrees(), "features": ["a"], "target": "y", "output": "score"}, "without a target"),
    ({"model": NoLearn, "features": ["a"], "target": "y"}, "learn_one"),
    ({"model": lambda: 1 / 0, "features": ["a"], "target": "y"}, "ZeroDivisionError"),
    ({"model": linear_model.LinearRegression(), "features": ["a"], "target": "y", "learn": "yes"}, "True or False"),
])
def test_bad_arguments_fail_when_the_flow_is_built(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ms.FlowDefinitionError, match=message) as info:
        keyed().predict(**kwargs)
    assert info.value.location is not None and "test_predict.py" in info.value.location
    assert info.value.step is not None and info.value.step.startswith("predict")
    assert info.value.fix


def test_a_model_without_learn_one_can_still_predict() -> None:
    got = run([{"k": 1, "a": 2.0}], lambda s: s.key_by("k").predict(NoLearn, features=["a"], learn=False))
    assert got == [{"k": 1, "a": 2.0, "prediction": 0.0}]


def test_a_river_estimator_without_river_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    class LooksLikeRiver:
        def clone(self) -> Any:
            return self

        def learn_one(self, x: Any, y: Any) -> None: ...

        def predict_one(self, x: Any) -> float:
            return 0.0

    monkeypatch.setitem(sys.modules, "river", None)
    monkeypatch.setitem(sys.modules, "river.base", None)
    with pytest.raises(ms.errors.MissingDependencyError, match=r"millstream\[ml\]"):
        keyed().predict(LooksLikeRiver(), features=["a"], target="y")
    # a factory needs no river
    keyed().predict(LooksLikeRiver, features=["a"], target="y")


def test_the_plan_names_the_model() -> None:
    k = keyed()
    k.predict(linear_model.LinearRegression(), features=["a"], target="y").sink(ms.testing.CollectSink())
    assert "predict[LinearRegression.clone]" in str(k.flow.plan())
