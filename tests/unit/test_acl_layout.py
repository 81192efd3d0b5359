"""The least-privilege layout as data: who may do what, without a broker."""

from __future__ import annotations

import pytest

from services.control.acl import Grant, Principals, allows, layout, stale, to_bindings
from services.core.errors import ConfigError
from services.core.kafka import SCRATCH_GROUP_PREFIX
from services.core.settings import Topics

PREFIX = "rdv."
TOPICS = Topics.from_prefix(PREFIX)
P = Principals()
GRANTS = layout(TOPICS, PREFIX, P)


@pytest.mark.parametrize(("role", "topic", "operation", "allowed"), [
    (P.client, TOPICS.control, "WRITE", False),
    (P.client, TOPICS.requests, "WRITE", True),
    (P.client, TOPICS.answers, "READ", False),
    (P.model, TOPICS.scores, "WRITE", True),
    (P.model, TOPICS.control, "WRITE", False),
    (P.model, TOPICS.models, "WRITE", True),  # its input contract
    (P.model, TOPICS.models, "READ", False),  # never read by a worker (a review)
    (P.model, TOPICS.models, "DESCRIBE", True),  # implied by WRITE: the worker's metadata check
    (P.comparison, TOPICS.log, "READ", True),
    (P.comparison, TOPICS.requests, "READ", False),
    (P.rendezvous, TOPICS.requests, "WRITE", False),
    (P.rendezvous, TOPICS.answers, "DESCRIBE", True),  # implied by WRITE, as on the broker
    (P.admin, TOPICS.control, "WRITE", True),
    # Each service reads the max.message.bytes of what it writes; the comparison dead-letters.
    (P.rendezvous, TOPICS.log, "DESCRIBE_CONFIGS", True),
    (P.rendezvous, TOPICS.control, "DESCRIBE_CONFIGS", True),  # it checks the control topic's LogAppendTime
    (P.gateway, TOPICS.control, "DESCRIBE_CONFIGS", True),  # it checks that the control topic keeps its versions
    (P.client, TOPICS.control, "DESCRIBE_CONFIGS", False),  # `schedule show` skips the check (a courtesy there)
    (P.model, TOPICS.scores, "DESCRIBE_CONFIGS", True),
    (P.comparison, TOPICS.deadletter, "WRITE", True),
    (P.comparison, TOPICS.deadletter, "DESCRIBE_CONFIGS", True),
    (P.comparison, TOPICS.log, "WRITE", False),
    (P.comparison, TOPICS.control, "READ", True),  # its champion is the schedule's preferred model
    (P.comparison, TOPICS.control, "DESCRIBE_CONFIGS", True),  # it checks that the topic keeps its versions
    (P.comparison, TOPICS.control, "WRITE", False),
])
def test_who_may_do_what(role: str, topic: str, operation: str, allowed: bool) -> None:
    assert allows(GRANTS, role, "topic", topic, operation) is allowed


def test_transactional_ids_and_groups_follow_the_prefix() -> None:
    assert allows(GRANTS, P.rendezvous, "transactional_id", "rdv.rendezvous-host-42", "WRITE")
    assert not allows(GRANTS, P.model, "transactional_id", "rdv.rendezvous-host-42", "WRITE")
    # A worker's rescue process (services/model_worker/rescue.py): its group + ".rescue".
    assert allows(GRANTS, P.model, "transactional_id", "rdv.model.champion+challenger.rescue", "WRITE")
    assert allows(GRANTS, P.model, "transactional_id", "rdv.model.champion.rescue", "DESCRIBE")
    assert not allows(GRANTS, P.rendezvous, "transactional_id", "rdv.model.champion.rescue", "WRITE")
    assert not allows(GRANTS, P.client, "transactional_id", "rdv.model.champion.rescue", "WRITE")
    assert allows(GRANTS, P.model, "group", "rdv.model.champion", "READ")
    assert not allows(GRANTS, P.client, "group", "rdv.rendezvous", "READ")


def test_a_client_may_not_join_the_gateways_reply_group_nor_the_reverse() -> None:
    assert allows(GRANTS, P.client, "group", "rdv.client-app", "READ")
    assert not allows(GRANTS, P.client, "group", "rdv.gateway", "READ")
    assert allows(GRANTS, P.gateway, "group", "rdv.gateway", "READ")
    assert not allows(GRANTS, P.gateway, "group", "rdv.client", "READ")


def test_the_one_off_readers_groups_never_cover_a_deployments_own() -> None:
    prefix = "rdv-prod."  # under the old scratch grant (rdv-*), every role could join every group of it
    grants = layout(Topics.from_prefix(prefix), prefix, P)
    for role in (P.client, P.decoy, P.model, P.comparison):
        assert not allows(grants, role, "group", f"{prefix}rendezvous", "READ"), role
    assert allows(grants, P.decoy, "group", "rdv-scratch-range-0f1e", "READ")
    # Every deployment's admin is a reader of the shared scratch groups, no more: ALL let it delete
    # another deployment's (a review).
    assert allows(grants, P.admin, "group", "rdv-scratch-range-0f1e", "READ")
    assert not allows(grants, P.admin, "group", "rdv-scratch-range-0f1e", "DELETE")
    with pytest.raises(ConfigError, match="under rdv-scratch-"):
        layout(Topics.from_prefix("rdv-scratch-x."), "rdv-scratch-x.", P)
    # The other way round: a prefix the scratch groups' names begin with gave its admin ALL on them (a review).
    for prefix in ("rdv-", "rdv-scratch-"):
        with pytest.raises(ConfigError, match=f"topic prefix '{prefix}' begins the scratch groups' names"):
            layout(Topics.from_prefix(prefix), prefix, P)
    layout(Topics.from_prefix("rdv."), "rdv.", P)  # the default: its groups are rdv.*, apart


def test_grants_are_unique_and_become_acl_bindings() -> None:
    assert len(GRANTS) == len(set(GRANTS))
    assert len(to_bindings(GRANTS)) == len(GRANTS)


def test_principals_by_role_and_unknown_roles() -> None:
    assert Principals.from_pairs({"client": "alice"}).client == "User:alice"
    assert Principals.from_pairs({"client": "User:bob"}).client == "User:bob"
    with pytest.raises(ValueError, match="unknown role"):
        Principals.from_pairs({"nobody": "x"})


@pytest.mark.parametrize("nameless", ["", " ", "User:", "User: "])
def test_a_principal_without_a_name_is_refused(nameless: str) -> None:
    """`--principal client=` was granted as the principal 'User:' and shown as any other."""
    with pytest.raises(ValueError, match="no principal given for client"):
        Principals.from_pairs({"client": nameless})


def test_the_admin_may_create_and_write_topics_renamed_outside_the_prefix() -> None:
    """`--topic control=ops.control`: every service had its grants on it, the admin none, so
    `topics create` could not make it and `schedule set` could not write it (a review)."""
    topics = Topics.from_prefix("prod.", {"requests": "inbound-requests", "control": "ops.control"})
    grants = layout(topics, "prod.", P)
    for name in ("inbound-requests", "ops.control", "prod.scores"):
        assert allows(grants, P.admin, "topic", name, "CREATE") and allows(grants, P.admin, "topic", name, "WRITE")
    assert not allows(grants, P.admin, "topic", "someone-elses-topic", "WRITE")
    assert len([g for g in grants if g.principal == P.admin and g.resource == "topic"]) == 3  # the prefix and the two


def test_a_layout_that_would_grant_everyone_or_everything_is_refused() -> None:
    """`--topic-prefix ''` gave the admin ALL on every topic and group of the cluster, and
    `--principal client=*` gave User:* (everyone) the client's writes: both printed and applied."""
    with pytest.raises(ConfigError, match="needs a --topic-prefix"):
        layout(Topics.from_prefix(""), "")
    for loose in ("*", "User:*", "a b"):
        with pytest.raises(ValueError, match="must name one user"):
            Principals.from_pairs({"client": loose})
    assert Principals.from_pairs({"client": "alice"}).client == "User:alice"


def test_a_tls_principal_is_taken_whole_from_a_flag_and_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate's name holds ',': `--principal client=User:CN=alice,O=acme` was cut in two at
    it and refused as an unknown role 'O' (a probe)."""
    import argparse

    from services.cli.acl_command import AclSettings
    from services.core.settings import add_arguments, from_namespace

    parser = argparse.ArgumentParser()
    add_arguments(parser, AclSettings)
    args = parser.parse_args(["--principal", "client=User:CN=alice,O=Acme Corp", "--principal", "model=bob"])
    principals = from_namespace(AclSettings, args).principals()
    assert principals.client == "User:CN=alice,O=Acme Corp" and principals.model == "User:bob"
    monkeypatch.setenv("RDV_PRINCIPAL", "client=User:CN=carol,O=acme;gateway=gw")
    principals = from_namespace(AclSettings).principals()
    assert principals.client == "User:CN=carol,O=acme" and principals.gateway == "User:gw"
    monkeypatch.setenv("RDV_PRINCIPAL", "client=alice,model=bob")  # ',' between them: not one user
    with pytest.raises(ConfigError, match=r"principal of client holds another role's .* ';' between them"):
        from_namespace(AclSettings).principals()


@pytest.mark.parametrize("name", ["User:CN=alice, O=acme", "CN = alice", " CN=alice", "User:CN=alice,O=acme "])
def test_a_tls_principal_with_spaces_the_broker_would_not_write_is_refused(name: str) -> None:
    """The broker writes a certificate's name without spaces around ',' and '=' (RFC 2253): a grant
    to 'CN=alice, O=acme' would never match anyone."""
    with pytest.raises(ValueError, match="must name one user"):
        Principals.from_pairs({"client": name})


def test_a_prefix_without_a_separator_is_refused_its_admin_grants_would_reach_other_applications() -> None:
    """'prod' gave the admin ALL on production-billing's topics and groups (a review)."""
    with pytest.raises(ConfigError, match=r"--topic-prefix ending in '\.', '-' or '_' \(got 'prod'\)"):
        layout(Topics.from_prefix("prod"), "prod", P)
    assert layout(Topics.from_prefix("prod-"), "prod-", P)


def test_one_principal_given_several_roles_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """Each role's grants went to it silently: the client and gateway reply groups' separation undone."""
    Principals.from_pairs({"client": "apps", "gateway": "apps"})
    assert "one principal holds several roles, and so all their grants: User:apps (client, gateway)" in caplog.text


def test_pruning_removes_other_allow_grants_on_the_layouts_resources_only() -> None:
    """`acl apply --prune`: an earlier client principal's grants on the deployment's resources go;
    the layout's own, grants on another deployment's resources and the shared scratch groups'
    (every deployment's readers hold it) stay."""
    topics = Topics.from_prefix("rdv.")
    grants = layout(topics, "rdv.", Principals.from_pairs({"client": "bob"}))
    earlier = layout(topics, "rdv.", Principals())  # the client was User:rdv-client
    elsewhere = layout(Topics.from_prefix("other."), "other.", Principals())
    removed = stale([*grants, *earlier, *elsewhere], grants)
    assert removed and {g.principal for g in removed} == {"User:rdv-client"}
    assert not any(g.name.startswith("other.") or g.name == SCRATCH_GROUP_PREFIX for g in removed)
    assert Grant("User:rdv-client", "topic", topics.requests, "WRITE") in removed
    monitor = Grant("User:monitor", "topic", topics.log, "READ")
    assert stale([monitor], grants) == [monitor]  # anyone's, on the deployment's topic: --prune says so
    assert stale([Grant("User:monitor", "topic", "rdv.mine", "READ")], grants) == []  # not the layout's resource


def test_a_grant_from_one_host_on_the_layouts_resource_is_stale_and_removed_from_that_host() -> None:
    """--prune said 'exactly the layout' and kept an earlier principal's grant from one host."""
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    from services.control.acl import _grant_of

    on_the_broker = to_bindings([Grant("User:rdv-oldclient", "topic", TOPICS.requests, "WRITE", host="10.0.0.5")])[0]
    assert (on_the_broker.restype, on_the_broker.resource_pattern_type, on_the_broker.host,
            on_the_broker.operation, on_the_broker.permission_type) == (
        ResourceType.TOPIC, ResourcePatternType.LITERAL, "10.0.0.5", AclOperation.WRITE, AclPermissionType.ALLOW)
    found = _grant_of(on_the_broker)
    assert found == Grant("User:rdv-oldclient", "topic", TOPICS.requests, "WRITE", host="10.0.0.5")
    assert stale([found], GRANTS) == [found]
    assert found.describe() == f"User:rdv-oldclient WRITE topic {TOPICS.requests} from host 10.0.0.5"
    assert Grant(P.client, "topic", TOPICS.requests, "WRITE", host="10.0.0.5") not in GRANTS  # the layout's: any host
