"""Argument wiring of the lifecycle commands (models, deploy, promote, schedule, decoy, replay)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

from services.cli.common import messages, run_service, with_bootstrap
from services.core.settings import from_namespace


def _console() -> Console:
    return messages()


def _stdout() -> Console:
    """Tables on stdout. When piped, as wide as they need (rich would assume 80 columns and
    shorten figures to "…"), with no colour codes."""
    from services.cli.common import console

    if sys.stdout.isatty():
        return console()
    return console(width=1000, no_color=True, highlight=False)


def cmd_models(args: argparse.Namespace) -> int:
    from services.cli import lifecycle

    return lifecycle.cmd_models(with_bootstrap(from_namespace(lifecycle.ModelsSettings, args)), _stdout(), _console())


def cmd_schedule_show(args: argparse.Namespace) -> int:
    from services.cli import lifecycle

    settings = with_bootstrap(from_namespace(lifecycle.ScheduleViewSettings, args))
    return lifecycle.cmd_schedule_show(settings, _console(), _stdout())


def cmd_schedule_history(args: argparse.Namespace) -> int:
    from services.cli import lifecycle

    settings = with_bootstrap(from_namespace(lifecycle.ScheduleViewSettings, args))
    return lifecycle.cmd_schedule_history(settings, _console(), _stdout())


def cmd_schedule_set(args: argparse.Namespace) -> int:
    from services.cli import lifecycle

    settings = with_bootstrap(from_namespace(lifecycle.ScheduleSetSettings, args))
    return lifecycle.cmd_schedule_set(settings, _console())


def cmd_promote(args: argparse.Namespace) -> int:
    from services.cli import lifecycle
    from services.control.evidence import gate_figures

    settings = with_bootstrap(from_namespace(lifecycle.PromoteSettings, args))
    return lifecycle.cmd_promote(settings, args.name, _console(), gate_figures)


def cmd_rollback(args: argparse.Namespace) -> int:
    from services.cli import lifecycle

    return lifecycle.cmd_rollback(with_bootstrap(from_namespace(lifecycle.RollbackSettings, args)), _console())


def cmd_deploy(args: argparse.Namespace) -> int:
    from services.cli.deploy import DeploySettings
    from services.cli.deploy import cmd_deploy as run

    return run(with_bootstrap(from_namespace(DeploySettings, args)), args.name, _console())


def cmd_undeploy(args: argparse.Namespace) -> int:
    from services.cli.deploy import UndeploySettings
    from services.cli.deploy import cmd_undeploy as run

    # Its broker is found only to check the schedule: stopping works without one.
    return run(args.name, _console(), settings=from_namespace(UndeploySettings, args))


def cmd_decoy_serve(args: argparse.Namespace) -> int:
    from services.decoy.service import Decoy
    from services.decoy.settings import DecoySettings

    settings = with_bootstrap(from_namespace(DecoySettings, args))
    run_service(lambda: Decoy(settings), settings)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from services.cli.replay import ReplaySettings, run_replay

    return run_replay(with_bootstrap(from_namespace(ReplaySettings, args)), _stdout())


def register(commands: Any, selection: Any) -> None:
    """Add the lifecycle commands to the `rendezvous` parser (flags of the selected one only)."""
    lifecycle = "services.cli.lifecycle:"
    models = commands.add_parser("models", help="which models are live: rate, lag, latency, errors, role, contracts")
    selection.arguments(models, ("models",), lifecycle + "ModelsSettings")
    models.set_defaults(handler=cmd_models)

    deploy = commands.add_parser("deploy", help="start (or rescale) a model's workers, or rendezvous instances")
    deploy.add_argument("name", help="model name on the scores topic (its consumer group is <prefix>model.NAME), "
                        "or `rendezvous` for rendezvous instances")
    selection.arguments(deploy, ("deploy",), "services.cli.deploy:DeploySettings")
    deploy.set_defaults(handler=cmd_deploy)

    undeploy = commands.add_parser("undeploy", help="stop the processes `deploy` started")
    undeploy.add_argument("name", help="the name it was deployed under (a model, or rendezvous)")
    selection.arguments(undeploy, ("undeploy",), "services.cli.deploy:UndeploySettings")
    undeploy.set_defaults(handler=cmd_undeploy)

    promote = commands.add_parser("promote", help="make a model the champion (old champion = first fallback)")
    promote.add_argument("name", help="the model to promote")
    selection.arguments(promote, ("promote",), lifecycle + "PromoteSettings")
    promote.set_defaults(handler=cmd_promote)

    rollback = commands.add_parser("rollback", help="restore the previous schedule (as a new version)")
    selection.arguments(rollback, ("rollback",), lifecycle + "RollbackSettings")
    rollback.set_defaults(handler=cmd_rollback)

    schedule = commands.add_parser(
        "schedule", help="show the latest version (and which governs now when a change is pending), set a new "
        "version, or list its history")
    schedule_sub = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text, settings_class, handler in (
        ("show", "the latest version (a table, or --format json)", "ScheduleViewSettings", cmd_schedule_show),
        ("history", "every accepted version", "ScheduleViewSettings", cmd_schedule_history),
        ("set", "publish a new version from flags or a file", "ScheduleSetSettings", cmd_schedule_set),
    ):
        parser = schedule_sub.add_parser(action, help=help_text)
        selection.arguments(parser, ("schedule", action), lifecycle + settings_class)
        parser.set_defaults(handler=handler)

    decoy = commands.add_parser("decoy", help="run the decoy: archive every request exactly as received")
    decoy_sub = decoy.add_subparsers(dest="action", required=True, metavar="ACTION")
    decoy_serve = decoy_sub.add_parser("serve", help="consume the requests topic into an archive directory")
    selection.arguments(decoy_serve, ("decoy", "serve"), "services.decoy.settings:DecoySettings")
    decoy_serve.set_defaults(handler=cmd_decoy_serve)

    replay = commands.add_parser("replay", help="run a model over recorded requests; compare with the champion")
    selection.arguments(replay, ("replay",), "services.cli.replay:ReplaySettings")
    replay.set_defaults(handler=cmd_replay)
