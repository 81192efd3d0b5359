"""Challenger lifecycle on a real broker: promote and roll back live, refuse bad schedules."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Producer

from services.client.client import Client, make_request
from services.control.schedule import Schedule
from services.control.topic import encode_schedule, load_book
from services.core.codec import codec
from services.core.ranges import format_ms
from services.core.runtime import now_ms
from services.core.settings import Topics
from services.model_worker.models import demo_rows
from tests.integration.harness import PacedSender, Services, read_topic, wait_until
from tests.integration.test_cli import assert_one_line_error, rendezvous

pytestmark = pytest.mark.kafka


def test_promote_and_rollback_during_a_stream_switch_exactly_at_the_effective_time(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    services.worker(bootstrap, prefix, "demo:champion")
    services.worker(bootstrap, prefix, "demo:challenger")
    services.rendezvous(bootstrap, prefix, models=("champion", "challenger"), linger_ms=300)
    # The rendezvous must read each change before it takes effect: 10 s of margin on a loaded host.
    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix, "--effective-in", "10s")
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        # 250 requests/s until both changes have governed requests for 2 s each (each CLI call, a
        # fresh process, takes a few seconds): the cap is never reached.
        rows = demo_rows(1000, seed=11)
        stream = PacedSender(lambda i: client.submit(rows[i % len(rows)]), 60_000, 250.0, client.flush).start()
        wait_until(lambda: stream.sent >= 1000, 60, "the first requests")
        for change in (("promote", "challenger"), ("rollback",)):
            done = rendezvous(*change, *common)
            assert done.returncode == 0, done.stderr
            effective_at = max(load_book(config, topics.control, "default").versions,
                               key=lambda s: s.version).effective_at
            # The schedule changes at a time on the clock: 2 s of requests under it, then on.
            wait_until(lambda t=effective_at: now_ms() > t + 2000, 60, f"requests under the schedule of {change[0]}")
        stream.stop()
        stream.join(timeout=120)
        total = stream.sent

    answers = read_topic(config, topics.answers, expect=total, decode="answer", timeout=120)
    assert len(answers) == total and len({a["request_id"] for a in answers}) == total, "none lost, none doubled"
    versions = {s.version: s for s in load_book(config, topics.control, "default").versions}
    assert sorted(versions) == [1, 2, 3]
    assert versions[2].models[0] == "challenger" and versions[3].models[0] == "champion"
    promote_at, rollback_at = versions[2].effective_at, versions[3].effective_at
    segments = {1: 0, 2: 0, 3: 0}
    for answer in answers:
        created = answer["created_at"]
        expected = 1 if created < promote_at else 2 if created < rollback_at else 3
        segments[expected] += 1
        champion = versions[expected].models[0]
        assert (answer["schedule_version"], answer["model"], answer["status"]) == (expected, champion, "OK"), (
            answer, created - promote_at, created - rollback_at)
    assert all(segments.values()), f"every schedule governed some requests: {segments}"
    logged = read_topic(config, topics.log, expect=total, decode="comparison", timeout=120)
    by_id = {a["request_id"]: a["schedule_version"] for a in answers}
    assert all(r["schedule_version"] == by_id[r["request_id"]] for r in logged)


def test_malformed_forged_or_unknown_model_schedules_are_refused_and_the_old_one_stays(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    services.worker(bootstrap, prefix, "demo:champion")
    rendezvous_service = services.rendezvous(bootstrap, prefix, models=("champion",))
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        client.score(demo_rows(1)[0])  # the champion is live now

        refused = rendezvous("schedule", "set", "--models", "ghost", "--bootstrap", bootstrap, "--topic-prefix", prefix)
        assert_one_line_error(refused, "ghost", "sent no usable score")

        producer = Producer(config)
        producer.produce(topics.control, b"not a schedule", key=b"default/0000000003")
        stale = Schedule(models=("champion",), version=1, effective_at=5)
        producer.produce(topics.control, encode_schedule(stale), key="default/0000000001")
        year_2100 = Schedule(models=("champion",), version=5, effective_at=4_102_444_800_000)
        producer.produce(topics.control, encode_schedule(year_2100), key=year_2100.new_key())
        huge = Schedule(models=("champion",), version=2**63 - 1, effective_at=0)
        producer.produce(topics.control, encode_schedule(huge), key=huge.new_key())
        assert producer.flush(30) == 0

        dead = read_topic(config, topics.deadletter, expect=4, decode="deadletter")
        reasons = sorted(d["reason"] for d in dead if d["source_topic"] == topics.control)
        assert len(reasons) == 4, reasons
        assert any("not an Avro Schedule: neither single-object" in r for r in reasons)
        assert any("not newer than v1" in r for r in reasons)
        assert any("days after the record was written" in r for r in reasons)
        assert any("outside 1.." in r for r in reasons)
        assert all("v1 stays in force" in r for r in reasons)
        assert rendezvous_service.book.latest is not None and rendezvous_service.book.latest.version == 1
        # The CLI applies the same rule to the same records: it agrees on what is in force.
        where = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
        shown = rendezvous("schedule", "show", *where, "--format", "json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == 1, shown.stdout + shown.stderr
        table = rendezvous("schedule", "show", *where)
        assert table.returncode == 0 and "schedule 'default' v1" in table.stdout, table.stdout + table.stderr
        created = json.loads(shown.stdout)["created_at"]  # and its times readable, beside their epoch ms
        assert f"{created} ({format_ms(created)})" in table.stdout, table.stdout
        history = rendezvous("schedule", "history", *where)
        assert history.returncode == 0 and "effective at (UTC)" in history.stdout, history.stdout + history.stderr

        after = client.score(demo_rows(1, seed=2)[0])
    assert (after.schedule_version, after.model, after.status) == (1, "champion", "OK")
    # A fallback nothing serves (a typo, say) is published, with a note: requests would wait out
    # the deadline whenever the champion is late.
    noted = rendezvous("schedule", "set", "--models", "champion,ghsot", *where)
    assert noted.returncode == 0 and "published default v2" in noted.stderr, noted.stderr
    assert "fallback model(s) ghsot sent no usable score" in noted.stderr, noted.stderr


def test_gated_promotion_is_refused_with_the_figures_when_agreement_is_low(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    from services.model_worker.models.demo import contrarian_flips

    services.worker(bootstrap, prefix, "demo:champion")
    services.worker(bootstrap, prefix, "demo:contrarian", name="challenger")
    services.rendezvous(bootstrap, prefix, models=("champion", "challenger"), linger_ms=300)
    rows = demo_rows(300, seed=51)
    with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
        client.score_many(rows)
    read_topic(config, topics.log, expect=300)
    flipped = sum(contrarian_flips(row) for row in rows) / len(rows)
    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix, "--window", "1h")

    refused = rendezvous("promote", "challenger", "--require", "agreement>=0.95,n>=100", *common)
    assert_one_line_error(refused, "promotion of challenger refused", "agreement>=0.95 (measured")
    measured = float(refused.stderr.split("(measured ")[1].split(")")[0])
    assert measured == pytest.approx(1 - flipped, abs=1e-3), "the figure is the real paired agreement"
    assert "FAIL agreement>=0.95" in refused.stderr and "ok   n>=100" in refused.stderr
    assert load_book(config, topics.control, "default").latest.version == 1, "nothing was published"

    canary = rendezvous("promote", "canary", *common)
    assert_one_line_error(canary, "canary", "never promoted")

    passed = rendezvous("promote", "challenger", "--require", "agreement>=0.5,n>=300", *common)
    assert passed.returncode == 0, passed.stderr
    latest = load_book(config, topics.control, "default").latest
    assert latest is not None and latest.version == 2 and latest.models == ("challenger", "champion")


def test_deploy_runs_co_hosted_challengers_beside_the_champion_and_models_lists_them(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    services.worker(bootstrap, prefix, "demo:champion")
    services.rendezvous(bootstrap, prefix, models=("champion",))
    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
    name = f"cand{prefix[1:7]}"
    partner = f"{name}b"
    deployed = rendezvous("deploy", name, "--model", "demo:challenger", "--co-host", f"{partner}=demo:canary",
                          "--replicas", "2", "--wait-s", "180", *common, timeout=240)  # a loaded host
    try:
        assert deployed.returncode == 0, deployed.stderr
        assert "In docker-compose, add instead" in deployed.stderr and "replicas: 2" in deployed.stderr
        assert f'"--co-host", "{partner}=demo:canary"' in deployed.stderr
        with Client(config, topics, budget_ms=20_000, answer_wait_s=60) as client:
            answers = client.score_many(demo_rows(50, seed=61))
        assert {a.model for a in answers} == {"champion"}, "a deployed challenger answers nothing until promoted"
        from services.core.kafka import group_lag
        group = f"{prefix}model.{name}+{partner}"
        wait_until(lambda: group_lag(config, group, topics.requests) is not None, 30, "the challengers' first commit")
        listed = rendezvous("models", "--live-window-s", "120", *common)
        assert listed.returncode == 0, listed.stderr
        rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if line.count("│") > 5}
        assert "champion" in rows and name in rows and partner in rows
        assert "forest-1" in rows[name] and "2" in rows[name].split("│")[4], rows[name]  # the demo challenger
        assert "stump-1" in rows[partner] and "2" in rows[partner].split("│")[4], rows[partner]  # the canary
        for model in (name, partner):
            assert rows[model].split("│")[6].strip().isdigit(), f"the consumer lag of {model}: {rows[model]}"
    finally:
        undeployed = rendezvous("undeploy", name)
    assert undeployed.returncode == 0 and "undeployed" in undeployed.stderr


def test_a_deploy_whose_replicas_are_not_ready_in_time_says_they_run_and_how_to_stop_them(
    bootstrap: str, prefix: str, config: dict[str, Any], topics: Topics
) -> None:
    """It said only "not ready within 0s", exit 2: the replica went on scoring, unmentioned."""
    from services.cli.common import ensure_topics

    ensure_topics(config, topics, 4)
    name = f"slowjoin{prefix[1:7]}"
    deployed = rendezvous("deploy", name, "--model", "demo:canary", "--wait-s", "0", "--replicas", "5",
                          "--bootstrap", bootstrap, "--topic-prefix", prefix, timeout=120)
    try:
        assert_one_line_error(deployed, "not ready within 0s", f"{name}'s 5 replica(s) are started (pids [",
                              f"`rendezvous undeploy {name}` stops them")
        # and, before, that one of the five has no partition to read
        assert f"note: 5 replicas for 4 partitions of {topics.requests}: 1 of them stand by" in deployed.stderr
    finally:
        undeployed = rendezvous("undeploy", name)
    assert undeployed.returncode == 0 and "undeployed" in undeployed.stderr


def test_a_deployment_whose_replicas_all_exited_is_started_again_or_undeployed_by_its_name(
    bootstrap: str, prefix: str, config: dict[str, Any], topics: Topics
) -> None:
    """Both said it did not exist: "deploy needs --model SPEC", "not deployed on this machine"."""
    import os
    import signal

    from services.cli.common import ensure_topics
    from services.cli.deploy import _alive, running_pids

    ensure_topics(config, topics, 4)
    name, common = f"crashy{prefix[1:7]}", ("--bootstrap", bootstrap, "--topic-prefix", prefix)

    def kill_all() -> None:
        pids = running_pids(name)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "the replicas to die")

    first = rendezvous("deploy", name, "--model", "demo:canary", "--wait-s", "120", *common, timeout=180)
    try:
        assert first.returncode == 0, first.stderr
        kill_all()
        again = rendezvous("deploy", name, "--wait-s", "120", *common, timeout=180)
        assert again.returncode == 0, again.stderr
        assert f"{name}: none of its replicas runs any more; starting it again as deployed (demo:canary)" \
            in again.stderr
        assert len(running_pids(name)) == 1
        kill_all()
    finally:
        undeployed = rendezvous("undeploy", name)
    assert undeployed.returncode == 0, undeployed.stderr
    assert f"undeployed {name}: none of its replicas was running any more" in undeployed.stderr


def test_a_new_model_catches_up_on_history_before_joining_live_traffic(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    import time as clock

    started = int(clock.time() * 1000) - 1000
    producer = Producer(config)
    requests = codec("request")
    ids = []
    for row in demo_rows(300, seed=62):
        record = make_request(row, budget_ms=1000, reply_topic=None, reply_partition=None)
        ids.append(record["request_id"])
        producer.produce(topics.requests, requests.encode(record), key=record["request_id"])
    assert producer.flush(30) == 0
    # A new group that would start at the end ("latest") starts at --start-at instead.
    worker = services.worker(bootstrap, prefix, "demo:challenger", start_from="latest", start_at=str(started))
    wait_until(lambda: worker.scored >= 300, 60, "the new model to score the history")
    scores = read_topic(config, topics.scores, expect=300, decode="score")
    assert {s["request_id"] for s in scores} == set(ids)


def test_deploy_scales_a_model_mid_stream_without_losing_or_double_scoring(
    bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
    name = f"scale{prefix[1:7]}"
    producer = Producer(config)
    requests = codec("request")
    ids: list[str] = []

    def send(i: int) -> None:
        record = make_request(demo_rows(1, seed=i)[0], budget_ms=60_000, reply_topic=None, reply_partition=None)
        ids.append(record["request_id"])
        producer.produce(topics.requests, requests.encode(record), key=record["request_id"])
        producer.poll(0)

    assert rendezvous("deploy", name, "--model", "demo:champion", *common).returncode == 0
    try:
        # 250 requests/s until both rescalings are done (a replica's start takes seconds on a loaded
        # host): the cap is never reached.
        sender = PacedSender(send, 120_000, 250.0, lambda: producer.flush(30)).start()
        wait_until(lambda: len(ids) >= 800, 60, "the stream to be under way")
        scaled_up = rendezvous("deploy", name, "--replicas", "3", "--wait-s", "150", *common, timeout=240)
        assert scaled_up.returncode == 0 and "runs 3 replica(s)" in scaled_up.stderr, scaled_up.stderr
        grown = len(ids)
        wait_until(lambda: len(ids) >= grown + 1000, 60, "4 s of the stream with three replicas")
        scaled_down = rendezvous("deploy", name, "--replicas", "1", "--wait-s", "150", *common, timeout=240)
        assert scaled_down.returncode == 0 and "runs 1 replica(s)" in scaled_down.stderr, scaled_down.stderr
        shrunk = len(ids)
        wait_until(lambda: len(ids) >= shrunk + 500, 60, "2 s of the stream with one replica")
        sender.stop()
        sender.join()
        scores = read_topic(config, topics.scores, expect=len(ids), decode="score", timeout=120)
    finally:
        rendezvous("undeploy", name)
    per_request = Counter(s["request_id"] for s in scores if s["model"] == name)
    instances = {s["instance"] for s in scores if s["model"] == name}
    assert set(per_request) == set(ids), f"{len(set(ids) - set(per_request))} requests never scored"
    assert max(per_request.values()) == 1, "a request scored twice across the rescaling"
    assert len(instances) == 3, f"every replica scored a share: {instances}"


@pytest.mark.parametrize(("co_host", "needle"), [
    ("nameless", "--co-host expects NAME=SPEC"),
    ("a+b=demo:canary", "--co-host name 'a+b': use letters, digits"),
    ("x=demo:canary", "co-hosted models need distinct names, got x, x"),
    ("y=demo:nosuch", "unknown demo model 'demo:nosuch'"),
])
def test_deploy_refuses_a_bad_co_host_in_one_line(co_host: str, needle: str) -> None:
    refused = rendezvous("deploy", "x", "--model", "demo:challenger", "--co-host", co_host,
                         "--bootstrap", "127.0.0.1:1")
    assert_one_line_error(refused, needle)


def test_a_demo_on_a_kept_control_topic_names_its_own_models_but_keeps_a_promotion(
    config: dict[str, Any], topics: Topics
) -> None:
    """A second demo with other --models was governed by the first run's schedule, which named models
    it did not run: every answer a TIMEOUT."""
    from rich.console import Console

    from services.cli.demo import _schedule_naming
    from services.control import changes
    from services.control.topic import publish

    publish(config, topics.control, Schedule(models=("champion", "challenger"), created_at=now_ms()))
    specs = [("slow", "demo:slow"), ("flaky", "demo:flaky")]
    _schedule_naming(specs, 300, config, topics, Console(quiet=True))
    latest = load_book(config, topics.control, "default").latest
    assert latest is not None and latest.models == ("slow", "flaky") and latest.version == 2
    book = load_book(config, topics.control, "default")
    publish(config, topics.control, changes.next_version(book, Schedule(models=("flaky", "slow")), now_ms(), 0))
    console = Console(record=True, width=400)
    _schedule_naming(specs, 300, config, topics, console)  # the same models: the promotion stays
    latest = load_book(config, topics.control, "default").latest
    assert latest is not None and latest.models == ("flaky", "slow") and latest.version == 3
    # and the demo says so (its table's answers by model would otherwise be a riddle)
    assert "the kept schedule v3 is in force: flaky, slow in that order" in console.export_text()


def test_of_two_changes_published_as_one_version_the_first_holds_everywhere_and_the_second_is_told(
    bootstrap: str, prefix: str, config: dict[str, Any], topics: Topics
) -> None:
    """Two operators read v1 and both published v2 under one key: running readers took the first,
    compaction kept the second for every reader started later, and the second operator was told
    'published'."""
    from rich.console import Console

    from services.cli.lifecycle import ChangeSettings, _publish_next
    from services.control import changes
    from services.control.topic import publish
    from services.core.errors import ConfigError

    publish(config, topics.control, Schedule(models=("champion", "challenger"), created_at=now_ms()))
    stale = load_book(config, topics.control, "default")  # what both operators read
    first = changes.next_version(stale, Schedule(models=("challenger", "champion"), comment="first"), now_ms(), 0)
    publish(config, topics.control, first)
    settings = ChangeSettings(bootstrap=bootstrap, topic_prefix=prefix, effective_in="1s", force=True)
    with pytest.raises(ConfigError, match="v2 was published by another change first"):
        _publish_next(settings, stale, Schedule(models=("champion",), comment="second"), Console(quiet=True))
    latest = load_book(config, topics.control, "default").latest
    assert latest is not None and latest.version == 2 and latest.comment == "first"
    keys = [m.key() for m in read_topic(config, topics.control, expect=3)]
    assert len(set(keys)) == 3, keys  # each write its own key: compaction keeps the first v2 too
    # A third operator making the first one's change is told it is made: told "run yours again",
    # a rollback run again undid the rollback another had just published (a review).
    console = Console(record=True, width=400)
    same = _publish_next(settings, stale, Schedule(models=("challenger", "champion"), comment="third"), console)
    assert same.version == 2 and same.comment == "first"
    assert "default v2 makes the same change, published first by another writer (first;" in console.export_text()


def test_a_model_whose_every_score_is_an_error_is_not_live_for_a_change(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """A model answering nothing but errors counted as scoring: promote, rollback and schedule set
    let it become the champion."""
    from services.control.topic import publish

    publish(config, topics.control, Schedule(models=("champion",), created_at=now_ms()))
    services.worker(bootstrap, prefix, "demo:champion")
    producer, requests = Producer(config), codec("request")
    for _ in range(5):  # features the champion does not know: each gets an error Score
        record = make_request({"unknown_feature": 1.0}, budget_ms=1000, reply_topic=None, reply_partition=None)
        producer.produce(topics.requests, requests.encode(record), key=record["request_id"])
    assert producer.flush(30) == 0
    producer.close()
    read_topic(config, topics.scores, expect=5)
    refused = rendezvous("schedule", "set", "--models", "champion", "--bootstrap", bootstrap, "--topic-prefix", prefix)
    assert_one_line_error(refused, "champion sent no usable score")


def test_a_model_is_live_while_its_worker_is_in_its_group_not_once_it_left(
    bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """schedule set refused a running model after a minute without traffic, and rollback accepted
    one undeployed seconds before, its scores still in the window (a review)."""
    import threading

    from services.model_worker.settings import WorkerSettings
    from services.model_worker.worker import ModelWorker

    stop = threading.Event()
    worker = ModelWorker(WorkerSettings(bootstrap=bootstrap, topic_prefix=prefix, model="demo:champion"))
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    where = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
    try:
        assert worker.ready.wait(60), "the worker did not start"
        idle = rendezvous("schedule", "set", "--models", "champion", *where)  # it has scored nothing
        assert idle.returncode == 0, idle.stderr
        with Client(config, topics, budget_ms=1_000, answer_wait_s=1) as client:
            client.submit(demo_rows(1, seed=4)[0])
            client.flush(30)
        read_topic(config, topics.scores, expect=1)
    finally:
        stop.set()
        thread.join(30)
    refused = rendezvous("schedule", "set", "--models", "champion", *where)  # its score is in the window
    assert_one_line_error(refused, "champion has no worker in its consumer group now")


def test_a_change_that_supersedes_a_pending_promotion_governs_the_live_rendezvous_at_once(
    services: Services, bootstrap: str, prefix: str, topics: Topics, config: dict[str, Any]
) -> None:
    """A promotion scheduled an hour ahead held back every later change until it started, an
    urgent one included (a review). With --supersede-pending the change governs in seconds, the
    promotion never; the running rendezvous, the CLI and a reader started afterwards agree."""
    services.worker(bootstrap, prefix, "demo:champion")
    services.worker(bootstrap, prefix, "demo:challenger")
    services.rendezvous(bootstrap, prefix, models=("champion", "challenger"))
    where = ("--bootstrap", bootstrap, "--topic-prefix", prefix, "--force")
    promoted = rendezvous("promote", "challenger", "--effective-in", "1h", *where)
    assert promoted.returncode == 0, promoted.stderr
    urgent = rendezvous("schedule", "set", "--models", "challenger,champion", "--effective-in", "5s",
                        "--supersede-pending", "--comment", "urgent", *where)
    assert urgent.returncode == 0, urgent.stderr
    assert "v2 (challenger, champion; promote challenger (was champion)) was to take effect at" in urgent.stderr
    book = load_book(config, topics.control, "default")
    started = book.latest_start
    assert started is not None and book.latest is not None and book.latest.version == 3
    assert book.for_request(started + 3_600_000).version == 3 and book.superseded_by(2) == 3
    wait_until(lambda: now_ms() > started + 500, 30, "the urgent version's start")
    with Client(config, topics, budget_ms=5_000, answer_wait_s=30) as client:
        answer = client.score(demo_rows(1, seed=4)[0])
    assert (answer.schedule_version, answer.model, answer.status) == (3, "challenger", "OK")
    history = rendezvous("schedule", "history", "--bootstrap", bootstrap, "--topic-prefix", prefix,
                         env={"COLUMNS": "300"})  # one line a version
    assert "never (superseded by v3" in history.stdout, history.stdout


def test_the_first_schedule_can_be_set_before_any_rendezvous_ran(bootstrap: str, prefix: str) -> None:
    """On an empty control topic `schedule set` refused, saying to run `schedule set`."""
    where = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
    first = rendezvous("schedule", "set", "--models", "champion,challenger", "--force", *where)
    assert first.returncode == 0 and "v1" in first.stderr, first.stderr
    shown = rendezvous("schedule", "show", *where, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["version"], json.loads(shown.stdout)["models"]) == (1, ["champion", "challenger"])


def test_a_version_no_reader_takes_is_looked_for_by_one_reader_until_the_read_back_gives_up(
    config: dict[str, Any], topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back after a publish made a new reader every 0.1 s until it found the version (a
    client, a metadata request and the whole history each time), for up to 5 s. A version set to
    take effect further ahead than readers allow is refused by every one of them: it is never found."""
    from services.cli.common import ensure_topics
    from services.control import topic
    from services.control.topic import MAX_EFFECTIVE_AHEAD_MS, ControlFeed, publish
    from services.core.errors import ConfigError
    from services.core.topic_tail import TopicTail

    ensure_topics(config, topics, 1)
    made, reads = [], []
    real_init, real_read = TopicTail.__init__, ControlFeed.read_history

    def counted_init(tail: TopicTail, *args: Any, **kwargs: Any) -> None:
        made.append(tail)
        real_init(tail, *args, **kwargs)

    def counted_read(feed: ControlFeed, *args: Any, **kwargs: Any) -> Any:
        reads.append(feed)
        return real_read(feed, *args, **kwargs)

    monkeypatch.setattr(TopicTail, "__init__", counted_init)
    monkeypatch.setattr(ControlFeed, "read_history", counted_read)
    monkeypatch.setattr(topic, "READ_BACK_S", 1.5)
    too_far = Schedule(models=("champion",), created_at=now_ms(), effective_at=now_ms() + 2 * MAX_EFFECTIVE_AHEAD_MS)
    with pytest.raises(ConfigError, match="could be read back within"):
        publish(config, topics.control, too_far)
    assert len(made) == 1, f"{len(made)} readers made for one read-back"
    assert len(reads) >= 2, "it read on until it gave up"
    assert load_book(config, topics.control, "default").latest is None, "every reader refuses it"


def test_undeploy_refuses_to_stop_the_model_the_schedule_answers_with_unless_forced(
    services: Services, bootstrap: str, prefix: str, tmp_path: Any
) -> None:
    """The one command that stops the preferred model had no check: every answer then fell back
    at the deadline (or timed out), where promote, rollback and schedule set refuse to prefer a
    model that does not score (a review by experiment)."""
    services.rendezvous(bootstrap, prefix, models=("champion", "challenger"))
    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
    own = {"RDV_CACHE_DIR": str(tmp_path)}  # a deployment named champion of its own, not this machine's
    assert rendezvous("deploy", "champion", "--model", "demo:champion", *common, env=own).returncode == 0
    try:
        refused = rendezvous("undeploy", "champion", *common, env=own)
        assert_one_line_error(refused, "champion is what schedule default v1 answers with", "--force")
    finally:
        forced = rendezvous("undeploy", "champion", "--force", *common, env=own)
    assert forced.returncode == 0 and "undeployed champion" in forced.stderr, forced.stderr


def test_undeploy_refuses_to_stop_the_last_rendezvous_unless_another_serves(
    services: Services, bootstrap: str, prefix: str, config: dict[str, Any], topics: Topics, tmp_path: Any
) -> None:
    """`undeploy rendezvous` stopped the one instance answering requests, unasked (a newcomer
    review): every client then waited out its deadline. Another instance in its group (here one
    in this process) makes it safe."""
    from services.cli.common import ensure_topics
    from services.core.kafka import group_member_count

    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix)
    own = {"RDV_CACHE_DIR": str(tmp_path)}  # a deployment of its own, not this machine's
    ensure_topics(config, topics, 2)
    deployed = rendezvous("deploy", "rendezvous", "--wait-s", "120", *common, env=own, timeout=180)
    assert deployed.returncode == 0, deployed.stderr
    try:
        refused = rendezvous("undeploy", "rendezvous", "--bootstrap", bootstrap, env=own)  # its own prefix
        assert_one_line_error(refused, f"these 1 instance(s) are every member of consumer group {prefix}rendezvous",
                              "undeploy rendezvous --force")
        services.rendezvous(bootstrap, prefix, models=("champion",))  # joins the same group
        wait_until(lambda: group_member_count(config, f"{prefix}rendezvous") == 2, 60, "the second member")
        undeployed = rendezvous("undeploy", "rendezvous", "--bootstrap", bootstrap, "--topic-prefix", "another.",
                                env=own)  # its own prefix all the same
        assert undeployed.returncode == 0 and "undeployed rendezvous" in undeployed.stderr, undeployed.stderr
        assert "not checked" not in undeployed.stderr
    finally:
        rendezvous("undeploy", "rendezvous", "--force", env=own)  # whatever failed above: nothing left running


def test_a_trusted_model_file_stays_trusted_when_its_deployment_scales_up(
    bootstrap: str, prefix: str, tmp_path: Any
) -> None:
    """--trust-model-file was not kept with the deployment: replicas a scale-up started without it
    refused the file and exited."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    from services.model_worker.models.demo import DEMO_FEATURES, demo_data

    x, y = demo_data()
    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression(max_iter=2000).fit(x, y), path)
    (tmp_path / "model.joblib.features.json").write_text(json.dumps(list(DEMO_FEATURES)))
    common = ("--bootstrap", bootstrap, "--topic-prefix", prefix, "--wait-s", "150")
    name = f"trusted{prefix[1:7]}"
    try:
        deployed = rendezvous("deploy", name, "--model", str(path), "--trust-model-file", *common, timeout=240)
        assert deployed.returncode == 0, deployed.stderr
        scaled = rendezvous("deploy", name, "--replicas", "2", *common, timeout=240)
        assert scaled.returncode == 0 and "runs 2 replica(s)" in scaled.stderr, scaled.stderr
    finally:
        rendezvous("undeploy", name)
