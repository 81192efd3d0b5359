"""Least-privilege Kafka ACLs for one deployment: who may read and write what.

The layout is pure data (`layout`), so it can be shown, tested and reviewed without a broker;
`apply` creates it with the admin client (creating an ACL that exists is a no-op on the broker).

Principals (SASL user names, `User:<name>`), one per role:

- admin: every topic and group of the deployment (create topics, publish schedules).
- rendezvous: read requests, scores and control; write answers, log, dead letters, replies,
  clock records (into scores) and the bootstrap schedule (into control, only when it has none);
  its group and its transactional ids.
- model: read requests; write scores, dead letters and its published signature; its groups and
  its rescue process's transactional ids (`<prefix>model.*`: the worker's group + ".rescue." + its instance).
- comparison: read the log, and the control topic (its champion is the schedule's preferred model).
  decoy: read requests.
- client: write requests; read replies, published signatures and the control topic (to check
  features and show schedules); groups `<prefix>client*` (an application's reply group); nothing else.
- gateway: a client that also reads the log (a call to one model by name waits for its
  comparison record); groups `<prefix>gateway*`, its own (a client may not join the gateways'
  reply group and take their replies, nor the reverse).

Every reader also gets the short-lived groups the code uses for one-off reads (`rdv-scratch-…`
with a random suffix), as a prefixed grant; a topic prefix under which the deployment's own groups
would fall under that grant is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from services.core.errors import ConfigError
from services.core.kafka import SCRATCH_GROUP_PREFIX
from services.core.settings import TOPIC_ROLES, Topics

log = logging.getLogger(__name__)

# The deployment's own consumer groups, after its topic prefix.
GROUPS = ("rendezvous", "model.", "comparison", "decoy", "client", "gateway")


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: `principal` may `operation` on the `resource` named `name` (literal or prefix)."""

    principal: str
    resource: str  # topic | group | transactional_id
    name: str
    operation: str  # READ | WRITE | DESCRIBE | DESCRIBE_CONFIGS | ALL
    prefixed: bool = False
    host: str = "*"  # the layout's are from any host; one found on the broker may name one

    def describe(self) -> str:
        pattern = f"{self.name}*" if self.prefixed else self.name
        return f"{self.principal} {self.operation} {self.resource} {pattern}" + (
            f" from host {self.host}" if self.host != "*" else "")


@dataclass(frozen=True)
class Principals:
    """The SASL principal of each role (`User:<name>`)."""

    admin: str = "User:rdv-admin"
    rendezvous: str = "User:rdv-rendezvous"
    model: str = "User:rdv-model"
    comparison: str = "User:rdv-comparison"
    decoy: str = "User:rdv-decoy"
    client: str = "User:rdv-client"
    gateway: str = "User:rdv-gateway"

    @classmethod
    def from_pairs(cls, pairs: Mapping[str, str]) -> Principals:
        """Overrides like {"client": "alice"}; a bare name becomes `User:<name>`."""
        unknown = sorted(set(pairs) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles: {', '.join(ROLES)}")
        # 'client=' or 'client=User:' named no one: it was granted as the principal 'User:'.
        # 'client=alice,model=bob' in one item (the variable's old separator) would grant a user
        # named 'alice,model=bob': a certificate's name holds ',', but no attribute named as a role.
        joined = sorted(role for role, name in pairs.items() if _ANOTHER_ROLE.search(name))
        if joined:
            raise ValueError(f"the principal of {', '.join(joined)} holds another role's ('role=' after a ','): "
                             "give each in its own --principal (in RDV_PRINCIPAL, ';' between them)")
        nameless = sorted(role for role, name in pairs.items() if not _named(name))
        if nameless:
            raise ValueError(f"no principal given for {', '.join(nameless)} (e.g. client=alice or client=User:alice)")
        # 'client=*' granted User:* (everyone) a role's rights; a space names no SASL user either.
        loose = sorted(role for role, name in pairs.items() if "*" in name or _spaced(name))
        if loose:
            raise ValueError(f"the principal of {', '.join(loose)} must name one user: no '*' (that would grant "
                             "everyone) and no spaces (in a certificate's name, only inside a value: O=Acme Corp)")
        made = cls(**{role: name if ":" in name else f"User:{name}" for role, name in pairs.items()})
        shared = _shared(made)
        if shared:
            # Each gets both roles' grants: the client and gateway reply groups apart, or a model's
            # rights apart from the rendezvous', are undone (a review).
            log.warning("one principal holds several roles, and so all their grants: %s", shared)
        return made

    def of(self, role: str) -> str:
        return str(getattr(self, role))



def _spaced(principal: str) -> bool:
    """Whether spaces make `principal` name no one the broker authenticates: any in a user name;
    in a distinguished name (a TLS principal: CN=alice,O=Acme Corp) any but inside a value, since
    the broker writes it without them around ',' and '=' (RFC 2253) and the grant would not match."""
    if "=" not in principal:
        return any(c.isspace() for c in principal)
    return principal != principal.strip() or _SPACE_AROUND_DN_SYNTAX.search(principal) is not None


# A ',', '=' or '+' escaped by '\\' is part of a value (Kafka writes CN=Smith\\, John): spaces may follow it.
_SPACE_AROUND_DN_SYNTAX = re.compile(r"\s[,=+]|(?<!\\)[,=+]\s")


def _named(principal: str) -> bool:
    """Whether 'alice' or 'User:alice' names someone ('' and 'User:' do not)."""
    kind, colon, name = principal.partition(":")
    return bool((name if colon else kind).strip())


# The roles, as named by the fields of `Principals` (one list to keep).
ROLES = tuple(f.name for f in fields(Principals))
_ANOTHER_ROLE = re.compile(rf"(?<!\\),\s*(?:{'|'.join(ROLES)})\s*=", re.IGNORECASE)


def _topic(principal: str, operation: str, *names: str) -> list[Grant]:
    return [Grant(principal, "topic", name, operation) for name in names]


def _shared(principals: Principals) -> str:
    """Principals given to more than one role, said as 'User:a (client, gateway)'; '' when none."""
    roles: dict[str, list[str]] = {}
    for role in ROLES:
        roles.setdefault(getattr(principals, role), []).append(role)
    return "; ".join(f"{name} ({', '.join(held)})" for name, held in roles.items() if len(held) > 1)


def _groups(principal: str, *prefixes: str) -> list[Grant]:
    return [Grant(principal, "group", prefix, "READ", prefixed=True) for prefix in (*prefixes, SCRATCH_GROUP_PREFIX)]


def _under(prefix: str, topics: Topics) -> set[str]:
    """The deployment's topic names the admin's prefixed grant covers."""
    return {getattr(topics, role) for role in TOPIC_ROLES if getattr(topics, role).startswith(prefix)}


def layout(topics: Topics, prefix: str, principals: Principals = Principals()) -> list[Grant]:
    """Every grant of a deployment whose topics are `topics` and whose names start with `prefix`."""
    if not prefix:
        # A prefixed grant of '' is every topic and group of the cluster: the admin's ALL on them.
        raise ConfigError("the ACL layout needs a --topic-prefix (an empty one would grant the admin role every "
                          "topic and group of the cluster)")
    if prefix[-1] not in ".-_":
        # The admin's grants are prefixed by it: 'prod' gave it ALL on production-billing's
        # topics and groups too (a review).
        raise ConfigError(f"the ACL layout needs a --topic-prefix ending in '.', '-' or '_' (got {prefix!r}): "
                          "the admin role's prefixed grants would cover every topic and group whose name begins "
                          f"{prefix!r}, other applications' too")
    if SCRATCH_GROUP_PREFIX.startswith(prefix):
        # The admin's ALL on groups under the prefix would cover every deployment's scratch groups,
        # which its READ below was chosen not to (a review: 'rdv-' let it delete them).
        raise ConfigError(f"topic prefix {prefix!r} begins the scratch groups' names ({SCRATCH_GROUP_PREFIX}*), "
                          "which every deployment's services join for one-off reads: the admin role's grants "
                          "under it would cover other deployments' too; choose another")
    overlapping = [f"{prefix}{group}" for group in GROUPS if f"{prefix}{group}".startswith(SCRATCH_GROUP_PREFIX)]
    if overlapping:
        raise ConfigError(f"topic prefix {prefix!r} names groups ({', '.join(overlapping)}) under "
                          f"{SCRATCH_GROUP_PREFIX}*, which every service may join for one-off reads: choose another")
    t, p = topics, principals
    grants: list[Grant] = [
        Grant(p.admin, "topic", prefix, "ALL", prefixed=True),
        Grant(p.admin, "group", prefix, "ALL", prefixed=True),
        # READ, as every reader: ALL let one deployment's admin delete the scratch groups of any other.
        Grant(p.admin, "group", SCRATCH_GROUP_PREFIX, "READ", prefixed=True),
        # Topics renamed outside the prefix (--topic role=name): admin creates them and writes the
        # control topic too (a review: every role had its grants on them but admin).
        *_topic(p.admin, "ALL", *sorted({getattr(t, role) for role in TOPIC_ROLES} - _under(prefix, t))),
        *_topic(p.rendezvous, "READ", t.requests, t.scores, t.control, t.answers, t.log),
        *_topic(p.rendezvous, "WRITE", t.answers, t.log, t.deadletter, t.replies, t.scores, t.control),
        # It checks at start-up that requests, scores and control keep LogAppendTime (and control its
        # versions: no delete policy); every service
        # reads the max.message.bytes of the topics it writes (StreamSpec.outputs).
        *_topic(p.rendezvous, "DESCRIBE_CONFIGS", t.requests, t.scores, t.control, t.answers, t.log, t.deadletter),
        *_groups(p.rendezvous, f"{prefix}rendezvous"),
        Grant(p.rendezvous, "transactional_id", f"{prefix}rendezvous", "WRITE", prefixed=True),
        Grant(p.rendezvous, "transactional_id", f"{prefix}rendezvous", "DESCRIBE", prefixed=True),
        *_topic(p.model, "READ", t.requests),  # the models topic: it publishes its contract, never reads it
        *_topic(p.model, "WRITE", t.scores, t.deadletter, t.models),
        *_topic(p.model, "DESCRIBE_CONFIGS", t.scores, t.deadletter),
        *_groups(p.model, f"{prefix}model."),
        # The rescue process of a worker stuck holding the GIL commits its batch in a transaction
        # (services/model_worker/rescue.py).
        Grant(p.model, "transactional_id", f"{prefix}model.", "WRITE", prefixed=True),
        Grant(p.model, "transactional_id", f"{prefix}model.", "DESCRIBE", prefixed=True),
        *_topic(p.comparison, "READ", t.log, t.control),
        # It checks at start that the control topic keeps its versions, as the rendezvous does.
        *_topic(p.comparison, "DESCRIBE_CONFIGS", t.control),
        # A record it cannot read is dead-lettered (without WRITE the refusal would stop it).
        *_topic(p.comparison, "WRITE", t.deadletter),
        *_topic(p.comparison, "DESCRIBE_CONFIGS", t.deadletter),
        *_groups(p.comparison, f"{prefix}comparison"),
        *_topic(p.decoy, "READ", t.requests),
        *_groups(p.decoy, f"{prefix}decoy"),
    ]
    for role, group in ((p.client, "client"), (p.gateway, "gateway")):
        grants += [*_topic(role, "WRITE", t.requests), *_topic(role, "READ", t.replies, t.models, t.control),
                   *_groups(role, f"{prefix}{group}")]
    grants += _topic(p.gateway, "READ", t.log)
    # It checks at start that the control topic keeps its versions (no delete policy), as the rendezvous does.
    grants += _topic(p.gateway, "DESCRIBE_CONFIGS", t.control)
    return sorted(set(grants))


# A Grant's resource kind -> confluent-kafka's ResourceType member.
_RESOURCE_TYPES = {"topic": "TOPIC", "group": "GROUP", "transactional_id": "TRANSACTIONAL_ID"}
_RESOURCE_KINDS = {theirs: ours for ours, theirs in _RESOURCE_TYPES.items()}  # the other way round


def to_bindings(grants: Iterable[Grant]) -> list[Any]:
    """confluent-kafka `AclBinding`s (ALLOW) of the grants."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    patterns = {True: ResourcePatternType.PREFIXED, False: ResourcePatternType.LITERAL}
    return [
        AclBinding(ResourceType[_RESOURCE_TYPES[g.resource]], g.name, patterns[g.prefixed], g.principal, g.host,
                   AclOperation[g.operation], AclPermissionType.ALLOW)
        for g in grants
    ]


def allows(grants: Iterable[Grant], principal: str, resource: str, name: str, operation: str) -> bool:
    """Whether the grants let `principal` do `operation` on `name` (ALL covers every operation;
    READ and WRITE imply DESCRIBE, as on the broker)."""
    implied = {"DESCRIBE": {"DESCRIBE", "READ", "WRITE", "ALL"}}.get(operation, {operation, "ALL"})
    return any(
        g.principal == principal and g.resource == resource and g.operation in implied
        and (name.startswith(g.name) if g.prefixed else name == g.name)
        for g in grants
    )


def apply(admin: Any, grants: list[Grant], timeout_s: float = 30.0) -> int:
    """Create the grants' ACLs (existing ones stay); returns how many were sent. Raises on refusal."""
    futures = admin.create_acls(to_bindings(grants), request_timeout=timeout_s)
    for future in futures.values():
        future.result()
    return len(grants)


def stale(found: Iterable[Grant], grants: Iterable[Grant]) -> list[Grant]:
    """The ALLOW grants `found` on the broker that `prune` removes: those on a resource the layout
    `grants` names (the same name and pattern) that the layout does not hold, such as an earlier
    principal's. Not the shared scratch groups' (every deployment's readers hold that grant), and
    nothing on another resource (another deployment's, or the operator's own)."""
    wanted = set(grants)
    scope = {(g.resource, g.name, g.prefixed) for g in wanted if not _shared_scratch(g)}
    return sorted(g for g in set(found) if (g.resource, g.name, g.prefixed) in scope and g not in wanted)


def _shared_scratch(grant: Grant) -> bool:
    return grant.resource == "group" and grant.prefixed and grant.name == SCRATCH_GROUP_PREFIX


def prune(admin: Any, grants: list[Grant], timeout_s: float = 30.0) -> list[Grant]:
    """Delete the broker's `stale` ALLOW grants for the layout `grants` (DENY ones stay: removing
    one would widen access); returns them. Raises on refusal."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    anyone: Any = None  # in a filter, None matches every name, principal and host (the stubs say str)
    everything = AclBindingFilter(ResourceType.ANY, anyone, ResourcePatternType.ANY, anyone, anyone,
                                  AclOperation.ANY, AclPermissionType.ALLOW)
    found = [g for g in map(_grant_of, admin.describe_acls(everything, request_timeout=timeout_s).result()) if g]
    removed = stale(found, grants)
    if removed:
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                    b.permission_type) for b in to_bindings(removed)]
        for future in admin.delete_acls(filters, request_timeout=timeout_s).values():
            future.result()
    return removed


def _grant_of(binding: Any) -> Grant | None:
    """A broker's ALLOW binding as a Grant, its host kept (one from a given host only was left out,
    so --prune kept a host-limited grant of a principal it was run to lock out; a review); None on
    another kind of resource or pattern (the layout has none such, so none is stale)."""
    resource = _RESOURCE_KINDS.get(binding.restype.name)
    pattern = binding.resource_pattern_type.name
    if resource is None or pattern not in ("LITERAL", "PREFIXED"):
        return None
    return Grant(binding.principal, resource, binding.name, binding.operation.name, pattern == "PREFIXED",
                 binding.host)
