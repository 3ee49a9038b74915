"""Run options declared once: the pydantic settings models hold each option's type, default, help and bounds.

A command (or a deployment's flow) lists the options it exposes, `Opt("timeout", "llm.timeout_s")`: the
option `--timeout` (flow parameter `timeout`) sets the settings field at that dotted path (default: the
field of the option's name). Its type, default and help (`Field(description=...)`) are read from the
field; an option with several paths (`--seed`) sets each of them and joins their help. Values are
checked by the model, so a bad value is one line naming the option. Typer reads the options from a
typed signature made here; Prefect reads a flow's parameters from one too.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo

from doppel.tasks.settings import RunSettings


class OptionError(ValueError):
    """A value the settings model refused, worded with the option's name."""


@dataclass(frozen=True)
class Opt:
    name: str  # the option's name as a Python identifier: --name-with-dashes, flow parameter name_with_dashes
    targets: tuple[str, ...]  # dotted field paths in the settings model


def opt(name: str, *targets: str) -> Opt:
    return Opt(name, targets or (name,))


@dataclass(frozen=True)
class OptionSet:
    """The options of one command over one settings model, and values the command fixes itself."""

    model: type[BaseModel]
    opts: tuple[Opt, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted path -> value, not an option

    def names(self) -> list[str]:
        return [o.name for o in self.opts]

    def without(self, *names: str, **fixed: Any) -> OptionSet:
        """These options less `names`; `fixed` (option name -> value) set instead."""
        by_name = {o.name: o for o in self.opts}
        pinned = {path: value for name, value in fixed.items() for path in by_name[name].targets}
        kept = tuple(o for o in self.opts if o.name not in names and o.name not in fixed)
        return OptionSet(self.model, kept, {**self.fixed, **pinned})

    def only(self, *names: str, **fixed: Any) -> OptionSet:
        """Just the options `names`; `fixed` (option name -> value) set instead of offered."""
        return self.without(*(n for n in self.names() if n not in names and n not in fixed), **fixed)

    def field(self, path: str) -> FieldInfo:
        model: Any = self.model
        *parents, last = path.split(".")
        for part in parents:
            model = _model_of(model.model_fields[part].annotation)
        return model.model_fields[last]

    def default(self, o: Opt) -> Any:
        info = self.field(o.targets[0])
        return info.get_default(call_default_factory=True)

    def help(self, o: Opt) -> str:
        texts = [self.field(t).description or "" for t in o.targets]
        return "; ".join(dict.fromkeys(t for t in texts if t))

    def build(self, values: dict[str, Any], flag: str = "--") -> Any:
        """The settings model from option values (and the fixed ones); refusals name the option."""
        nested: dict[str, Any] = {}
        for path, value in self.fixed.items():
            _put(nested, path, value)
        for o in self.opts:
            if o.name in values:
                for path in o.targets:
                    _put(nested, path, values[o.name])
        try:
            return self.model.model_validate(nested)
        except ValidationError as exc:
            raise OptionError("; ".join(self._explain(error, values, flag) for error in exc.errors())) from None

    def _explain(self, error: Any, values: dict[str, Any], flag: str) -> str:
        path = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
        owner = next((o for o in self.opts if any(path == t or path.startswith(t + ".") for t in o.targets)), None)
        if owner is None:
            return f"{path}: {error['msg']}"
        name = flag + owner.name.replace("_", "-") if flag else owner.name
        return f"{name} {values.get(owner.name)!r}: {error['msg'].removeprefix('Value error, ')}"

    def typer_parameters(self) -> list[inspect.Parameter]:
        """Keyword parameters with typer.Option defaults: what Typer reads from a signature."""
        import typer

        params = []
        for o in self.opts:
            kind, default, flag = _cli_type(self.field(o.targets[0]).annotation), self.default(o), _flag(o.name)
            if kind is bool:
                option = typer.Option(default, f"{flag}/--no-{flag[2:]}", help=self.help(o))
            else:
                shown = ",".join(map(str, default)) if isinstance(default, list) else default
                option = typer.Option(shown, flag, help=self.help(o))
            params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
        return params

    def flow_parameters(self) -> list[inspect.Parameter]:
        """Keyword parameters with pydantic Field defaults: Prefect shows their descriptions in the UI."""
        params = []
        for o in self.opts:
            annotation: Any = self.field(o.targets[0]).annotation
            if _is_list(annotation):  # a list or its comma string (fold: u1,u2 or all)
                annotation = str | annotation
            if self.default(o) is None:  # None: the settings choose (fold: the dataset's default)
                annotation = annotation | None
            default = Field(self.default(o), description=self.help(o))
            params.append(
                inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )
        return params


def field_option(model: type[BaseModel], path: str, *names: str) -> Any:
    """A typer.Option with a settings field's default and help, for a command that builds no settings."""
    import typer

    info = OptionSet(model, ()).field(path)
    return typer.Option(info.get_default(call_default_factory=True), *names, help=info.description)


def settings_command(options: OptionSet, on_error: Callable[[str, int], Any]) -> Callable:
    """Decorate `fn(settings, **extra)`: Typer sees the options' signature plus fn's other parameters
    and `fn` gets the built settings (a refused value goes to `on_error(message, 2)`)."""

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn)
        extra = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(fn).parameters.values()
            if p.name != "settings"
        ]
        names = set(options.names())

        def command(**values: Any) -> Any:
            given = {k: v for k, v in values.items() if k in names}
            try:
                settings = options.build(given)
            except OptionError as exc:
                return on_error(str(exc), 2)
            return fn(settings, **{k: v for k, v in values.items() if k not in names})

        command.__signature__ = inspect.Signature(options.typer_parameters() + extra)  # type: ignore[attr-defined]
        command.__doc__, command.__name__ = fn.__doc__, fn.__name__
        return command

    return decorate


def _put(nested: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        nested = nested.setdefault(part, {})
    nested[last] = value


def _model_of(annotation: Any) -> type[BaseModel]:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise TypeError(f"{annotation} is not a settings model")


def _is_list(annotation: Any) -> bool:
    return any(get_origin(a) is list for a in (annotation, *get_args(annotation)))


def _cli_type(annotation: Any) -> Any:
    """str | int | float | bool, optional when the field is: lists are comma strings, Literals strings."""
    args = [a for a in get_args(annotation) if a is not NoneType] if _is_union(annotation) else [annotation]
    optional = len(args) < len(get_args(annotation)) if _is_union(annotation) else False
    base = args[0] if len(args) == 1 and args[0] in (str, int, float, bool) else str
    if len(args) == 1 and get_origin(args[0]) is Literal:
        base = str
    return base | None if optional else base


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (typing.Union, UnionType)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def dataset_options(prefix: str = "") -> tuple[Opt, ...]:
    """Where the data comes from (`prefix`: where the RunSettings sit in the command's model)."""
    return tuple(
        opt(name, prefix + name) for name in ("dataset", "data_dir", "item_text", "synthetic_users", "synthetic_items")
    )


def llm_options(prefix: str = "") -> tuple[Opt, ...]:
    """How to reach the LLM and how hard to push it."""
    llm = prefix + "llm."
    return (
        opt("base_url", llm + "base_url"),
        opt("model", llm + "model"),
        opt("gguf", llm + "gguf"),
        opt("concurrency", llm + "concurrency"),
        opt("rpm", llm + "rpm"),
        opt("concurrency_limit", llm + "concurrency_limit_name"),
        opt("timeout", llm + "timeout_s"),
        opt("cache_dir", llm + "cache_dir"),
    )


# `doppel run` (flows/cli_run.py) and the `doppel-job` deployment (flows/deploy.py)
RUN = OptionSet(
    RunSettings,
    (
        *dataset_options()[:3],
        opt("fold", "folds"),
        opt("users"),
        opt("user_ids"),
        *dataset_options()[3:],
        *llm_options()[:6],
        opt("embedded_slots", "llm.embedded_slots"),
        opt("temperature", "llm.temperature"),
        opt("seed", "llm.seed", "sample_seed"),
        opt("timeout", "llm.timeout_s"),
        *(opt(name, "sim." + name) for name in ("history_n", "profile_batch", "recent_k", "rate_batch")),
        *(opt(name, "sim." + name) for name in ("max_test_items", "target", "arena_run", "slice_frac", "slice_seed")),
        opt("overview_chars", "sim.overview_chars"),
        opt("prompts", "sim.prompts"),
        opt("update", "sim.update_profile"),
        opt("rating_probs", "llm.rating_probs"),
        opt("rating_samples", "llm.rating_samples"),
        opt("sample_temperature", "llm.sample_temperature"),
        opt("profile_keep_words", "llm.profile_keep_words"),
        opt("profile_penalty", "llm.profile_frequency_penalty"),
        opt("db"),
        opt("run_id"),
        opt("runner"),
        opt("dask_address"),
        opt("dask_workers"),
        opt("cache_dir", "llm.cache_dir"),
        opt("baselines"),
        opt("progress"),
        opt("price_prompt", "llm.price_prompt_per_mtok"),
        opt("price_completion", "llm.price_completion_per_mtok"),
    ),
)

DB = field_option(RunSettings, "db")  # --db of the commands that only read a database
