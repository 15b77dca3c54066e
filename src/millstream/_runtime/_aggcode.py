"""Code generation shared by keyed operators: key reading, accumulator updates, result rows."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from millstream._plan import KeySpec
from millstream.agg import Aggregation

from ._codegen import Generated


def key_expr(key: KeySpec | None, env: dict[str, Any], var: str = "r") -> str:
    """A Python expression reading the key of record ``var``."""
    if key is None:
        return "None"
    if key.fn is not None:
        env["_keyfn"] = key.fn
        return f"_keyfn({var})"
    if key.expr is not None:
        return key.expr.to_python(env, var)
    if len(key.fields) == 1:
        return f"{var}[{key.fields[0]!r}]"
    return "(" + ", ".join(f"{var}[{f!r}]" for f in key.fields) + ")"


def key_items(key: KeySpec | None) -> list[str]:
    """Dict-literal items that put key ``k`` into a result row."""
    if key is None:
        return []
    if key.fn is not None or key.expr is not None:
        return [f"{key.name!r}: k"]
    if len(key.fields) == 1:
        return [f"{key.fields[0]!r}: k"]
    return [f"{f!r}: k[{i}]" for i, f in enumerate(key.fields)]


def compile_key(key: KeySpec | None) -> Callable[[Any], Any]:
    env: dict[str, Any] = {}
    g = Generated()
    g.add(0, "def _key(r):")
    g.add(1, f"return {key_expr(key, env)}")
    fn, _ = g.compile("key", env, "_key")
    return fn


class AggCode:
    """The accumulator of a list of aggregations: ``a[i]`` holds aggregation ``i``."""

    def __init__(self, aggs: tuple[tuple[str, Aggregation], ...], timed: bool) -> None:
        self.aggs = aggs
        self.timed = timed
        self.env: dict[str, Any] = {}
        if not timed:
            self.env["_arrival"] = itertools.count().__next__
        self.init = "[" + ", ".join(agg.init_src(self.env, f"_a{i}_") for i, (_, agg) in enumerate(aggs)) + "]"

    def add_lines(self, g: Generated, depth: int, acc: str = "a", rec: str = "r", t: str = "t",
                  step: Any = None) -> None:
        """Emit lines that fold record ``rec`` at time ``t`` into accumulator ``acc``."""
        fields: dict[str | None, str] = {}
        for _, agg in self.aggs:
            if agg.needs_value() and agg.field not in fields:
                var = f"_v{len(fields)}"
                fields[agg.field] = var
                g.add(depth, f"{var} = {rec}[{agg.field!r}]" if agg.field is not None else f"{var} = {rec}", step)
        needs_t = any(agg.kind in ("first", "last") for _, agg in self.aggs)
        tv = t
        if needs_t and not self.timed:
            g.add(depth, "_t = _arrival()", step)
            tv = "_t"
        for i, (_, agg) in enumerate(self.aggs):
            v = fields.get(agg.field, "None")
            for line in agg.add_src(self.env, f"_a{i}_", f"{acc}[{i}]", v, tv):
                g.add(depth, line, step)

    def compile_add1(self) -> Callable[[list[Any], Any, Any], None]:
        """``add1(a, r, t)``: fold one record into an accumulator (slow paths)."""
        g = Generated()
        g.add(0, "def _add1(a, r, t):")
        self.add_lines(g, 1)
        g.add(1, "return a")
        fn, _ = g.compile("add1", self.env, "_add1")
        return fn

    def compile_new(self) -> Callable[[], list[Any]]:
        g = Generated()
        g.add(0, "def _new():")
        g.add(1, f"return {self.init}")
        fn, _ = g.compile("new", self.env, "_new")
        return fn

    def result_items(self, acc: str = "a") -> list[str]:
        items = []
        for i, (name, agg) in enumerate(self.aggs):
            if type(agg).result is Aggregation.result:
                items.append(f"{name!r}: {acc}[{i}]")
            else:
                self.env[f"_res{i}"] = agg.result
                items.append(f"{name!r}: _res{i}({acc}[{i}])")
        return items

    def compile_merge(self) -> Callable[[list[Any], list[Any]], list[Any]]:
        """``merge(a, b)``: a new accumulator of both (built-ins inline, no call per aggregation)."""
        parts = []
        for i, (_, agg) in enumerate(self.aggs):
            inline = agg.merge_src(f"a[{i}]", f"b[{i}]")
            if inline is None:
                self.env[f"_merge{i}"] = agg.merge
                inline = f"_merge{i}(a[{i}], b[{i}])"
            parts.append(inline)
        g = Generated()
        g.add(0, "def _merge(a, b):")
        g.add(1, "return [" + ", ".join(parts) + "]")
        fn, _ = g.compile("merge", self.env, "_merge")
        return fn
