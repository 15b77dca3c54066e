"""Online prediction: a model per key (or one for the stream), test-then-train.

``KeyedStream.predict`` and ``Stream.predict`` build a process step whose one value state
holds the key's model, so models are checkpointed with the rest of the job's state (they
must pickle, as river's do). For each record the step

1. reads the features ``x`` (a dict),
2. asks the model: ``predict_one(x)``, ``predict_proba_one(x)`` or ``score_one(x)``
   (``output`` = ``"prediction"``, ``"proba"`` or ``"score"``),
3. emits the record with that answer in the field named by ``output``,
4. then learns from the record: ``learn_one(x, y)`` with the target ``y`` (skipped while
   ``y`` is None: unlabelled records are predicted only), or ``learn_one(x)`` for models
   that learn without a target (anomaly detectors, clustering) when ``target`` is None.

So every prediction is made before the model has seen the record's answer, which is
what progressive validation measures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from millstream import _plan as P
from millstream._expr import Expr
from millstream._location import callable_name
from millstream.errors import FlowDefinitionError, MissingDependencyError
from millstream.state import value as _value_state

__all__ = ["OUTPUTS", "global_key", "predict_op"]

#: ``output`` -> the model method that answers it
OUTPUTS = {"prediction": "predict_one", "proba": "predict_proba_one", "score": "score_one"}


def global_key(record: Any) -> int:
    """The key of ``Stream.predict``: one model for the whole stream."""
    return 0


def _river_base() -> Any:
    try:
        import river.base
    except ImportError:
        raise MissingDependencyError("river", "ml", "predict() with a river estimator") from None
    return river.base.Base


@dataclass(frozen=True)
class CloneModel:
    """A factory that gives each key a fresh, untrained copy of a river estimator (``clone()``)."""

    prototype: Any

    @property
    def __name__(self) -> str:
        return f"{type(self.prototype).__name__}.clone"

    def __call__(self) -> Any:
        return self.prototype.clone()


@dataclass(frozen=True)
class PredictFn:
    """The process function of a predict step (a value, so that the plan pickles and compares)."""

    factory: Callable[[], Any]
    features: tuple[str, ...] | Callable[[Any], Any]
    target: str | Callable[[Any], Any] | None
    learn: bool
    output: str

    @property
    def __name__(self) -> str:
        return f"predict[{callable_name(self.factory)}]"

    def __call__(self, ctx: Any, record: Any) -> None:
        state = ctx.state["model"]
        model = state.value()
        fresh = model is None
        if fresh:
            model = self.factory()
        features = self.features
        x = features(record) if callable(features) else {f: record[f] for f in features}
        answer = getattr(model, OUTPUTS[self.output])(x)
        ctx.emit({**record, self.output: answer})
        if self.learn:
            target = self.target
            if target is None:
                model.learn_one(x)
            else:
                y = target(record) if callable(target) else record[target]
                if y is None:
                    if fresh:
                        state.update(model)
                    return
                model.learn_one(x, y)
            state.update(model)  # an on-disk backend keeps a copy: store the model after every change
        elif fresh:
            state.update(model)


def _factory(model: Any, step: str, loc: str | None) -> Callable[[], Any]:
    if isinstance(model, type):
        return model
    if hasattr(model, "learn_one") and hasattr(model, "clone") and not inspect.isroutine(model):
        base = _river_base()
        if isinstance(model, base):
            return CloneModel(model)
    if isinstance(model, Expr) or not callable(model):
        raise FlowDefinitionError(
            f"predict() takes a model factory (a function of no arguments or a class) or a river estimator, "
            f"not {type(model).__name__} {model!r}",
            step=step, location=loc,
            fix="pass e.g. river.linear_model.LinearRegression() (cloned per key) "
            "or lambda: MyModel(...) (called once per key)",
        )
    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):
        return model  # type: ignore[no-any-return]
    try:
        sig.bind()
    except TypeError:
        raise FlowDefinitionError(
            f"predict() calls its model factory with no arguments, but {callable_name(model)}{sig} needs some",
            step=step, location=loc,
            fix=f"wrap it: lambda: {callable_name(model)}(...)",
        ) from None
    return model  # type: ignore[no-any-return]


def _takes(method: Any, n: int) -> bool | None:
    try:
        sig = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*([None] * n))
    except TypeError:
        return False
    return True


def predict_op(key: P.KeySpec, model: Any, *, features: Any, target: Any, learn: Any, output: Any,
               step: str, loc: str | None) -> P.ProcessOp:
    """Check the arguments of ``predict()`` and build its process step."""
    if output not in OUTPUTS:
        raise FlowDefinitionError(
            f"predict(output={output!r}): output must be one of {', '.join(map(repr, OUTPUTS))}",
            step=step, location=loc,
            fix="'prediction' calls predict_one, 'proba' predict_proba_one (classifiers), "
            "'score' score_one (anomaly detectors)",
        )
    if not isinstance(learn, bool):
        raise FlowDefinitionError(f"predict(learn=...) takes True or False, not {learn!r}", step=step, location=loc,
                                  fix="learn=False only predicts with models trained elsewhere")
    factory = _factory(model, step, loc)
    feats = _features(features, step, loc)
    if target is not None and not (isinstance(target, str) and target) and (
            isinstance(target, Expr) or not callable(target)):
        raise FlowDefinitionError(
            f"predict(target=...) takes a field name or a function of the record, not {target!r}",
            step=step, location=loc, fix="e.g. target='amount' or target=lambda r: r['label'] == 'fraud'",
        )
    try:
        probe = factory()
    except Exception as exc:  # reported as a build error at the user's line
        raise FlowDefinitionError(
            f"predict(): making a model with {callable_name(factory)}() raised {type(exc).__name__}: {exc}",
            step=step, location=loc, fix="pass a factory that builds a model with no arguments",
        ) from exc
    method = OUTPUTS[output]
    kind = type(probe).__name__
    if not callable(getattr(probe, method, None)):
        answers = [o for o, m in OUTPUTS.items() if callable(getattr(probe, m, None))]
        raise FlowDefinitionError(
            f"predict(output={output!r}) calls {method}, which a {kind} does not have",
            step=step, location=loc,
            fix=f"use output={answers[0]!r}" if answers else f"give {kind} a {method}(x) method",
        )
    if learn:
        learn_one = getattr(probe, "learn_one", None)
        if not callable(learn_one):
            raise FlowDefinitionError(f"predict(learn=True) calls learn_one, which a {kind} does not have",
                                      step=step, location=loc, fix="pass learn=False to only predict")
        if target is None and _takes(learn_one, 1) is False:
            raise FlowDefinitionError(
                f"{kind}.learn_one needs a target (y), but predict() was given no target",
                step=step, location=loc, fix="name the field to learn from, e.g. target='label'",
            )
        if target is not None and _takes(learn_one, 2) is False:
            raise FlowDefinitionError(
                f"{kind}.learn_one(x) learns without a target, but predict() was given target={target!r}",
                step=step, location=loc, fix="drop target= for unsupervised models (anomaly detectors, clustering)",
            )
    fn = PredictFn(factory, feats, target, learn, output)
    return P.ProcessOp(key, fn, None, (("model", _value_state()),))


def _features(features: Any, step: str, loc: str | None) -> tuple[str, ...] | Callable[[Any], Any]:
    if isinstance(features, str) or not (isinstance(features, Sequence) or callable(features)) or isinstance(
            features, Expr):
        raise FlowDefinitionError(
            f"predict(features=...) takes a list of field names or a function record -> dict, not {features!r}",
            step=step, location=loc, fix="e.g. features=['amount', 'hour'] or features=lambda r: {'x': r['amount']}",
        )
    if callable(features):
        if _takes(features, 1) is False:
            raise FlowDefinitionError(
                f"predict() calls features(record), but {callable_name(features)} cannot take one argument",
                step=step, location=loc, fix="give it one parameter: features=lambda r: {...}",
            )
        return features  # type: ignore[no-any-return]
    names = tuple(features)
    bad = [f for f in names if not isinstance(f, str) or not f]
    if bad or not names:
        raise FlowDefinitionError(
            f"predict(features=...) needs field names (non-empty str), got {list(names)!r}",
            step=step, location=loc, fix="e.g. features=['amount', 'hour']",
        )
    if len(set(names)) != len(names):
        raise FlowDefinitionError(f"predict(features=...) names a field twice: {list(names)!r}",
                                  step=step, location=loc, fix="list each feature once")
    return names
