"""One typed schema for every config key a run accepts, checked before anything runs.

The trainer's and the dataset's keys are declared here (:data:`TRAINER_TYPES`, :data:`DATASET_TYPES`); a model's
keys come from the signature and annotations of its ``__init__`` (and its bases'; an unannotated keyword is typed
by its default where that is unambiguous), so a new model needs no entry.
Ranges that annotations cannot say (a width of 0, a dropout of 1.5) follow the key's name
(:data:`NAME_RULES`: ``*_hidden_units`` are positive widths, ``*dropout`` a fraction below 1, ...).

Validation is pydantic v2 (``TypeAdapter`` per key): it parses ``"1e-3"`` (what YAML 1.1 makes of ``1e-3``) as a
float, checks nested types (a list of widths) and ranges, and says where in a value the problem sits. Two
choices on top of pydantic's lax mode: a boolean is never taken for a number (``epochs: true``) and a number
never for a boolean; infinities and NaN are refused where a number is expected.

A value that is valid as given is kept exactly as given (an ``int`` where a ``float`` is declared stays an
``int``), so the config hash of every valid config is what it was before this schema; only values that needed a
conversion (``"1e-3"`` -> ``0.001``, ``5.0`` -> ``5`` for an integer) change.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import AllowInfNan, BeforeValidator, Field, StrictBool, TypeAdapter, ValidationError

from mdl_bench.kernel.errors import UserError, show_value


# ---------------------------------------------------------------------------------------------- ranges
class Range(typing.NamedTuple):
    """Bounds of a number (``None``: open); ``ge``/``le`` inclusive, ``gt``/``lt`` exclusive."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def text(self) -> str:
        n = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"
        low = f"[{n(self.ge)}" if self.ge is not None else (f"({n(self.gt)}" if self.gt is not None else None)
        high = f"{n(self.le)}]" if self.le is not None else (f"{n(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" >= {n(self.ge)}" if self.ge is not None else f" > {n(self.gt)}"
        if high:
            return f" <= {n(self.le)}" if self.le is not None else f" < {n(self.lt)}"
        return ""


POSITIVE_INT = Range(ge=1)
NON_NEGATIVE = Range(ge=0)
POSITIVE = Range(gt=0)
FRACTION = Range(ge=0, le=1)
DROPOUT = Range(ge=0, lt=1)  # a rate of 1 zeroes every input: the model would see nothing

# Ranges by key name, for model keys (first match wins). Annotations give the type, these the bounds.
NAME_RULES: list[tuple[str, Range]] = [
    (r"(^|_)hidden_units$", POSITIVE_INT),  # every width of an MLP
    (r"(^|_)(embedding|hidden|input|output)_dim$", POSITIVE_INT),
    (r"^num_|_experts$|_sub_experts$|_per_epoch$", POSITIVE_INT),
    (r"dropout", DROPOUT),
    (r"^learning_rate$|^beta$|^gate_gamma$|^max_gradient_norm$", POSITIVE),
    (r"momentum$|_target$|_frac$", FRACTION),
    (r"alpha|_weight$|^epsilon$|_rows$|_regularizer$", NON_NEGATIVE),
    (r"^gpu$", Range(ge=-1)),
]


def _reject_bool(value):
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number here")
    return value


def _whole_number(value):
    """``"1e3"`` (YAML text) where an integer is declared: 1000, as ``1000.0`` would be; ``"1.5e0"`` stays invalid."""
    value = _reject_bool(value)
    if isinstance(value, str):
        with_exponent = value.strip().lower()
        if "e" in with_exponent:
            try:
                number = float(with_exponent)
            except ValueError:
                return value
            if number.is_integer():
                return int(number)
    return value


def _reject_number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("a number is not text here")
    return value


_REGULARIZER = re.compile(r"^(l1|l2)\(\s*[-+0-9.eE]+\s*\)$|^l1_l2\(\s*[-+0-9.eE]+\s*,\s*[-+0-9.eE]+\s*\)$")


def _regularizer(value):
    """FuxiCTR's regularizer: a float (L2 weight), or ``l1(x)``, ``l2(x)``, ``l1_l2(x, y)``.

    FuxiCTR ignores an ``int`` weight (``isinstance(reg, float)``), so a non-zero integer becomes a float; ``0`` stays
    as it is (no regularisation either way, and the hashes of the shipped configs keep it)."""
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise ValueError("a boolean is not a regularizer")
        return value
    if isinstance(value, str):
        text = value.strip()
        if _REGULARIZER.match(text):
            return text
        try:
            value = float(text)
        except ValueError:
            raise ValueError("not a number, l1(x), l2(x) or l1_l2(x, y)") from None
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise ValueError("a regularizer weight must be a finite number >= 0")
        return value if value == 0 else float(value)
    raise ValueError("not a number, l1(x), l2(x) or l1_l2(x, y)")


REGULARIZER = Annotated[Any, BeforeValidator(_regularizer)]
REGULARIZER_TEXT = "a number >= 0, or l1(x), l2(x), l1_l2(x, y)"

# ---------------------------------------------------------------------------------------------- declared keys
# Keys read by the trainer and the run script (FuxiCTR's BaseModel, this package's runner, loaders, DDP;
# record_ia: benchmark/measure/epochs.py; evaluate_test: false = a tuning trial, the test split is never read; tuning_trial: a trial's stage and number in its row's search; models_from: where a model outside the package is found, set by
# runner.resolve). config.RUN_KEYS is this table's keys.
TRAINER_TYPES: dict[str, tuple[Any, Range | None]] = {
    "model": (str, None), "dataset_id": (str, None), "model_id": (str, None), "loss": (str, None),
    "metrics": (list[str], None), "task": (str, None), "optimizer": (str, None),
    "learning_rate": (float, POSITIVE), "batch_size": (int, POSITIVE_INT), "epochs": (int, POSITIVE_INT),
    "shuffle": (bool, None), "seed": (int | None, Range(ge=0, le=2**32 - 1)),
    "monitor": (Union[str, dict[str, float]], None), "monitor_mode": (Literal["min", "max"], None),
    "model_root": (str, None), "num_workers": (int | None, NON_NEGATIVE), "verbose": (int, NON_NEGATIVE),
    "early_stop_patience": (int, NON_NEGATIVE), "pickle_feature_encoder": (bool, None),
    "save_best_only": (bool, None), "eval_steps": (int | None, POSITIVE_INT), "debug_mode": (bool, None),
    "gpu": (int, Range(ge=-1)), "embedding_regularizer": (REGULARIZER, None), "net_regularizer": (REGULARIZER, None),
    "reduce_lr_on_plateau": (bool, None), "max_gradient_norm": (float, POSITIVE), "feature_config": (Any, None),
    "use_features": (Any, None), "feature_specs": (Any, None), "group_id": (str | None, None),
    "embedding_dim": (int, POSITIVE_INT), "shuffle_buffer": (int, POSITIVE_INT), "dist_timeout": (float, POSITIVE),
    "nproc": (int | None, POSITIVE_INT), "record_ia": (Union[bool, list[str]], None), "models_from": (Any, None),
    "evaluate_test": (bool, None), "tuning_trial": (str | None, None),
}
# Keys of a dataset block (FuxiCTR's, plus the multi-domain ones of this package).
DATASET_TYPES: dict[str, tuple[Any, Range | None]] = {
    "dataset_id": (str, None), "data_root": (str, None), "data_format": (Literal["csv", "parquet"], None),
    "train_data": (str, None), "valid_data": (str, None), "test_data": (str, None),
    "min_categr_count": (int, NON_NEGATIVE), "feature_cols": (Union[list[dict], dict], None),
    "label_col": (Union[dict, list[dict]], None), "group_id": (str | None, None), "rebuild_dataset": (bool, None),
    "data_block_size": (int | None, NON_NEGATIVE), "use_features": (Any, None), "feature_specs": (Any, None),
    "domain_field": (str, None), "domains": (list, None), "domain_names": (list | str | None, None),
    "roles": (dict[str, str] | None, None),
    "oracle_field": (str | None, None), "synth": (dict | None, None), "num_workers": (int | None, NON_NEGATIVE),
}


def name_range(key: str) -> Range | None:
    for pattern, bounds in NAME_RULES:
        if re.search(pattern, key):
            return bounds
    return None


# ---------------------------------------------------------------------------------------------- types
def _leaf(kind: type, bounds: Range | None) -> tuple[Any, str, str]:
    """(pydantic type, description, plural description) of a scalar."""
    if kind is bool:
        return StrictBool, "true or false", "booleans"
    if kind is str:
        return Annotated[str, BeforeValidator(_reject_number)], "text", "strings"
    if kind in (int, float):
        limits = {k: v for k, v in (bounds or Range())._asdict().items() if v is not None}
        extra = [AllowInfNan(False)] if kind is float else []
        tp = Annotated[kind, BeforeValidator(_whole_number if kind is int else _reject_bool), *extra,
                       Field(**limits)]
        word, words = ("an integer", "integers") if kind is int else ("a number", "numbers")
        text = (bounds or Range()).text()
        return tp, word + text, words + text
    return kind, f"a {kind.__name__}", f"{kind.__name__} values"


def typed(annotation, bounds: Range | None = None) -> tuple[Any, str, str]:
    """A pydantic type for ``annotation`` with ``bounds`` on its numbers, and its description (singular, plural).

    Handles what model signatures use: scalars, ``X | None``, unions, ``Literal``, ``Sequence[X]``/``list[X]``/
    ``tuple[X, ...]``, ``dict``; anything else is taken as it is (``Any``)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return Any, "anything", "anything"
    if typing.get_origin(annotation) is Annotated:  # our own declared types (the regularizer)
        return annotation, REGULARIZER_TEXT, REGULARIZER_TEXT
    if annotation is type(None) or annotation is None:
        return type(None), "null", "nulls"
    if isinstance(annotation, type) and annotation in (bool, str, int, float):
        return _leaf(annotation, bounds)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        parts = [typed(a, bounds) for a in args]
        tps = tuple(p[0] for p in parts)
        none_last = sorted(parts, key=lambda p: p[1] == "null")
        return (Union[tps], " or ".join(p[1] for p in none_last), " or ".join(p[2] for p in none_last))
    if origin is Literal:
        text = "one of " + ", ".join(str(a) for a in args)
        return annotation, text, text
    if origin in (list, tuple, collections.abc.Sequence, typing.Sequence) or annotation in (list, tuple):
        item = args[0] if args else Any
        item_tp, _, plural = typed(item, bounds)
        container = {list: list, tuple: tuple}.get(origin or annotation, collections.abc.Sequence)
        tp = tuple[item_tp, ...] if container is tuple else container[item_tp]
        return tp, f"a list of {plural}", f"lists of {plural}"
    if origin is dict or annotation is dict:
        return annotation, "a mapping", "mappings"
    return Any, "anything", "anything"


class KeyType(typing.NamedTuple):
    adapter: TypeAdapter
    expected: str


@functools.lru_cache(maxsize=None)
def _adapter(annotation, bounds: Range | None) -> KeyType:
    tp, text, _ = typed(annotation, bounds)
    try:
        return KeyType(TypeAdapter(tp), text)
    except Exception:  # an annotation pydantic cannot build a validator for: the key is not checked
        return KeyType(TypeAdapter(Any), "anything")


def model_types(model_class) -> dict[str, tuple[Any, Range | None]]:
    """``{key: (annotation, range)}`` of a model's ``__init__`` keywords, its bases' included (a subclass's
    annotation wins); an unannotated keyword is typed by its default (:func:`_from_default`), else ``Any``."""
    out: dict[str, tuple[Any, Range | None]] = {}
    for klass in reversed(inspect.getmro(model_class)):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not resolve: keep the names, not their types
            hints = {}
        for name, p in inspect.signature(init).parameters.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("self", "feature_map"):
                out[name] = (hints.get(name) or _from_default(name, p.default), name_range(name))
    return out


def _from_default(name: str, default) -> Any:
    """The type of an unannotated keyword, where its default says it safely: a bool, a float, widths or counts
    (an int or a list of ints under a name of :data:`NAME_RULES`); anything else stays unchecked. ``null`` is
    allowed too (FuxiCTR configs write it for "the default"; the model decides what it means)."""
    if isinstance(default, bool):
        return bool | None
    if isinstance(default, float):
        return float | None
    ints = isinstance(default, int) or (isinstance(default, (list, tuple)) and default
                                        and all(isinstance(v, int) and not isinstance(v, bool) for v in default))
    if ints and name_range(name) in (POSITIVE_INT, NON_NEGATIVE):
        return (int if isinstance(default, int) else collections.abc.Sequence[int]) | None
    return Any


def key_types(model_class=None) -> dict[str, tuple[Any, Range | None]]:
    """The schema of a run: model keys, then dataset and trainer keys over them (declared ranges win)."""
    out = dict(model_types(model_class)) if model_class is not None else {}
    out.update(DATASET_TYPES)
    out.update(TRAINER_TYPES)
    return out


# ---------------------------------------------------------------------------------------------- checking
def _keep_given(given, parsed):
    """``parsed``, except where ``given`` was already valid as it is (so the config hash does not move)."""
    if isinstance(given, (list, tuple)) and isinstance(parsed, (list, tuple)) and len(given) == len(parsed):
        return type(given)(_keep_given(g, p) for g, p in zip(given, parsed))
    if isinstance(given, dict) and isinstance(parsed, dict) and given.keys() == parsed.keys():
        return {k: _keep_given(given[k], parsed[k]) for k in given}
    if isinstance(given, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        return parsed  # 5.0 where an integer is declared: pass the integer on
    if type(given) is not str and type(parsed) is not str and given == parsed:
        return given
    return parsed


def _where(loc: tuple) -> str:
    """`` (item 2)`` for an error inside a list (pydantic's ``loc`` holds the index among validator names)."""
    inner = [str(p) for p in loc if not isinstance(p, str) or not p.startswith(("function-", "constrained-"))]
    inner = [p for p in inner if p not in ("int", "float", "str", "bool", "list", "dict", "none", "tuple")]
    return f" (item {inner[0]})" if inner and inner[0].isdigit() else ""


def check_value(key: str, value, annotation, bounds: Range | None, source: str | None, what: str = "config key"):
    """The value to use for ``key``, or a one-line :class:`UserError` naming the key (a ``what``), the value, what
    is expected and where the value came from."""
    kind = _adapter(annotation, bounds)
    try:
        parsed = kind.adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f" (from {source})" if source else ""
        reason = str(first.get("msg", "")).removeprefix("Value error, ")
        reason = "" if first.get("type") in _SAID_BY_EXPECTED else f" ({reason[:1].lower() + reason[1:]})"
        raise UserError(f"{what} {key!r} = {show_value(value)}{where}: expected {kind.expected}"
                        f"{_where(tuple(first.get('loc', ())))}{reason}; fix the value") from None
    # a regularizer's integer weight must become a float (FuxiCTR ignores ints); elsewhere keep what was valid
    return parsed if annotation is REGULARIZER else _keep_given(value, parsed)


# pydantic error types whose message only repeats the expected type or range
_SAID_BY_EXPECTED = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "int_parsing",
                     "int_type", "float_parsing", "float_type", "bool_type", "bool_parsing", "string_type",
                     "literal_error", "list_type", "dict_type", "tuple_type", "int_from_float", "finite_number"}


def validate(params: dict, model_class=None, sources: dict | None = None, strict: bool = True) -> dict:
    """``params`` checked against the schema (trainer, dataset and ``model_class``'s keys), with values that needed
    a conversion converted. ``strict=False`` converts what it can and leaves invalid values as they are (readers of
    stored runs: the leaderboard must still find a run whatever is invalid now)."""
    schema = key_types(model_class)
    sources = sources or {}
    out = dict(params)
    for key, value in params.items():
        if key not in schema:
            continue  # unknown keys are config.check_keys's to report
        annotation, bounds = schema[key]
        try:
            out[key] = check_value(key, value, annotation, bounds, sources.get(key))
        except UserError:
            if strict:
                raise
    return out
