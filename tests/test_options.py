"""Run options declared once: the CLI's options and doppel-job's parameters come from the settings models."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from doppel.flows.options import RUN, OptionError
from doppel.tasks.settings import RunSettings


def click_params(command: str) -> dict:
    import typer.main

    from doppel.flows.cli import app

    group = typer.main.get_command(app)
    *path, last = command.split()
    for name in path:
        group = group.commands[name]
    return {p.name: p for p in group.commands[last].params}


@pytest.mark.parametrize("command", ["run", "ensemble", "sandbox run", "ui", "rl", "ingest", "score"])
def test_every_option_has_its_fields_default_and_help(command):
    from doppel.flows import cli_ensemble, cli_rl, cli_sandbox

    options = {
        "run": RUN,
        "ensemble": cli_ensemble.ENSEMBLE,
        "sandbox run": cli_sandbox.SANDBOX,
        "ui": cli_sandbox.UI,
        "rl": cli_rl.RL,
    }.get(command)
    params = click_params(command)
    if options is None:
        assert params["db"].default == RunSettings().db
        return
    defaults = options.build({})  # the model's own defaults, and the command's fixed values
    for o in options.opts:
        param = params[o.name]
        assert param.help == options.help(o) and param.help, o.name
        value = defaults
        for part in o.targets[0].split("."):
            value = getattr(value, part)
        shown = ",".join(value) if isinstance(value, list) else value
        if param.default is None:  # the field's default is None: the settings choose (fold: the dataset's)
            assert options.default(o) is None, o.name
            continue
        assert param.default == shown, (o.name, param.default, shown)


def test_the_deployment_takes_the_same_options():
    from doppel.flows.deploy import JOB, run_job

    schema = run_job.parameters.model_dump()["properties"]
    assert set(schema) == set(JOB.names()) and set(JOB.names()) < set(RUN.names())
    for o in JOB.opts:
        assert schema[o.name]["description"] == RUN.help(o)
    assert schema["concurrency"]["default"] == RunSettings().llm.concurrency
    settings = JOB.build({"fold": "all", "user_ids": ["1", "2"], "seed": 7}, flag="")
    assert settings.folds == ["u1", "u2", "u3", "u4", "u5"] and settings.user_ids == ["1", "2"]
    assert settings.llm.seed == settings.sample_seed == 7 and settings.progress is False


def test_a_refused_value_names_the_option():
    with pytest.raises(OptionError, match=r"--concurrency 0: .*greater than or equal to 1"):
        RUN.build({"concurrency": 0})
    done = CliRunner().invoke(click_app(), ["run", "--slice-frac", "1.5", "--dry-run"])
    assert done.exit_code == 2 and "--slice-frac 1.5" in done.output, done.output


def test_fold_and_user_ids_as_the_user_writes_them():
    settings = RUN.build({"fold": "u1, u3", "user_ids": "5,7"})
    assert settings.folds == ["u1", "u3"] and settings.user_ids == ["5", "7"]


def click_app():
    from doppel.flows.cli import app

    return app
