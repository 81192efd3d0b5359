"""`rendezvous acl show|apply`: the deployment's least-privilege ACL layout (services/control/acl.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from services.cli.common import with_bootstrap
from services.core.errors import BrokerError, ConfigError
from services.core.kafka.error_kinds import kafka_message
from services.core.settings import KafkaSettings, check_format, from_namespace, parse_pairs, setting
from services.core.terminal import printable


@dataclass(frozen=True)
class AclSettings(KafkaSettings):
    """The ACLs of one deployment: which principal may read and write which topic and group."""

    # Each flag is one item, and the variable's items are split on ';': a TLS principal is a
    # distinguished name, which holds ',' (User:CN=alice,O=acme was cut in two at it).
    principal: tuple[str, ...] = setting(
        (), "A role's principal, role=name (repeatable; in the variable, ';' between them), e.g. --principal "
        "client=alice or client=User:CN=alice,O=acme (a TLS certificate's name, as the broker writes it). "
        "Roles: admin, rendezvous, model, comparison, decoy, client, gateway; default names rdv-<role>.",
        separator=";", split_flags=False,
    )
    format: str = setting("table", "Output of `show`: table (for people) or json (for scripts).")

    def validate(self) -> None:
        check_format(self.format)

    def principals(self) -> Any:
        from services.control.acl import Principals

        try:
            return Principals.from_pairs(dict(parse_pairs(self.principal, "--principal")))
        except ValueError as err:
            raise ConfigError(f"--principal: {err}") from None


@dataclass(frozen=True)
class AclApplySettings(AclSettings):
    """`acl apply`'s: the layout's, and whether other grants on its resources go."""

    prune: bool = setting(
        False, "Also remove every other ALLOW grant on the resources the layout names, the deployment's topics, "
        "groups and transactional ids (an earlier principal's, or anyone else's, from any host or one): those "
        "resources then hold the layout's grants only. DENY grants stay, as do grants on other resources, "
        "including wildcards and shorter prefixes that cover the deployment's names, and the shared scratch "
        "groups' grant.")


def _grants(settings: AclSettings) -> list[Any]:
    from services.control.acl import layout

    return layout(settings.topics(), settings.topic_prefix, settings.principals())


def cmd_acl_show(args: argparse.Namespace) -> int:
    settings = from_namespace(AclSettings, args)
    grants = _grants(settings)
    if settings.format == "json":
        print(json.dumps([asdict(g) for g in grants], indent=1))  # noqa: T201 - the command's output
        return 0
    for grant in grants:
        print(grant.describe())  # noqa: T201
    return 0


def cmd_acl_apply(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from services.control.acl import ROLES, apply, prune
    from services.core.kafka import admin, wait_for_broker

    settings = with_bootstrap(from_namespace(AclApplySettings, args))
    grants = _grants(settings)
    wait_for_broker(settings.librdkafka(), settings.connect_timeout_s)  # no broker is not a refusal
    try:
        client = admin(settings.librdkafka())
        count = apply(client, grants)
        removed = prune(client, grants) if settings.prune else []
    except KafkaException as exc:
        raise BrokerError(f"the broker refused the ACLs (run as a principal allowed to manage ACLs, such as the "
                          "cluster's super user, not the deployment's admin role, on a broker with an authorizer): "
                          f"{kafka_message(exc)}") from None
    for grant in removed:
        sys.stderr.write(f"removed: {printable(grant.describe())}\n")
    pruned = f"; {len(removed)} other grant(s) on its resources removed" if settings.prune else ""
    sys.stderr.write(f"{count} ACL(s) in place for {len(ROLES)} roles{pruned}\n")
    return 0


def register(commands: Any, selection: Any) -> None:
    acl = commands.add_parser("acl", help="least-privilege Kafka ACLs of the deployment: show or apply them")
    acl_sub = acl.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text, handler, settings in (
        ("show", "print every grant (principal, operation, resource)", cmd_acl_show, AclSettings),
        ("apply", "create the grants on the broker (as a principal allowed to manage ACLs, e.g. the cluster's super "
                  "user; it only adds, unless --prune: other grants on its resources go)", cmd_acl_apply,
         AclApplySettings),
    ):
        parser = acl_sub.add_parser(action, help=help_text)
        selection.arguments(parser, ("acl", action), settings)
        parser.set_defaults(handler=handler)
