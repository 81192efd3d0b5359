"""The Helm chart in deploy/helm/rendezvous-serving: `helm lint`, then `helm template` with the
default values and with ci/all-options-values.yaml (every option on), and invariants of the
rendered manifests. No cluster and no broker: what a real cluster would do with the manifests is
not tested here (docs/helm.md says so).

helm is built from the Go module proxy by deploy/ci/helm.sh (quick when already built); if it
cannot be built these tests fail, they never skip.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.model_worker.worker import stalled_after_s

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|JAAS", re.IGNORECASE)  # names of values, not of files

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "rendezvous-serving"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
RELEASE = "rdv"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# What helm.sh builds when HELM_BIN_DIR is not set.
HELM = REPO / ".cache" / "bin" / "helm"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    built = subprocess.run(["bash", str(REPO / "deploy" / "ci" / "helm.sh")], capture_output=True, text=True)
    if built.returncode != 0 or not HELM.is_file():
        pytest.fail(f"helm could not be built by deploy/ci/helm.sh:\n{built.stderr[-3000:]}")
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render(helm: Path, *args: str) -> list[Manifest]:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", "serving", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: maps merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = merge(base[key], value)
        else:
            merged[key] = value
    return merged


def merged_values(*files: Path) -> dict[str, Any]:
    """The values a render used: the chart's defaults, then each file over them."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in files:
        values = merge(values, yaml.safe_load(path.read_text()))
    return values


@dataclass(frozen=True)
class Render:
    name: str
    values: dict[str, Any]
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def workloads(self) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] in WORKLOAD_KINDS]

    def containers(self) -> Iterator[tuple[Manifest, dict[str, Any]]]:
        for workload in self.workloads():
            for container in pod_spec(workload)["containers"]:
                yield workload, container


@pytest.fixture(scope="module")
def default_render(helm: Path) -> Render:
    return Render("default", merged_values(), render(helm))


@pytest.fixture(scope="module")
def full_render(helm: Path) -> Render:
    return Render("all-options", merged_values(ALL_OPTIONS), render(helm, "-f", str(ALL_OPTIONS)))


@pytest.fixture(scope="module", params=["default", "all-options"])
def each_render(request: pytest.FixtureRequest) -> Render:
    fixture = "default_render" if request.param == "default" else "full_render"
    rendered: Render = request.getfixturevalue(fixture)
    return rendered


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def env_value(container: dict[str, Any], name: str) -> str:
    entry = env_of(container).get(name)
    assert entry is not None, f"{container['name']}: no {name}"
    value: str = entry["value"]
    return value


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def fullname() -> str:
    return f"{RELEASE}-rendezvous-serving"


def long_running(r: Render) -> list[Manifest]:
    return [w for w in r.workloads() if w["kind"] != "Job"]


# --- lint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_OPTIONS], ids=["default", "all-options"])
def test_helm_lint_strict_passes(helm: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_the_chart_renders_for_its_oldest_supported_kubernetes(helm: Path) -> None:
    declared = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    oldest = re.search(r"(\d+\.\d+\.\d+)", declared)
    assert oldest is not None, declared
    manifests = render(helm, "-f", str(ALL_OPTIONS), "--kube-version", oldest.group(1))
    assert {m["kind"] for m in manifests} >= {"Deployment", "StatefulSet", "Service"}


# --- what is rendered, and when --------------------------------------------------------------


def test_default_values_render_the_core_and_no_optional_objects(default_render: Render) -> None:
    r = default_render
    models = [m["name"] for m in r.values["models"]]
    assert {d["metadata"]["name"] for d in r.of_kind("Deployment")} == {
        *(f"{fullname()}-model-{name}" for name in models),
        f"{fullname()}-comparison",
    }
    assert {s["metadata"]["name"] for s in r.of_kind("StatefulSet")} == {
        f"{fullname()}-rendezvous",
        f"{fullname()}-decoy",
    }
    for optional in ("ServiceMonitor", "ScaledObject", "Job", "Secret"):
        assert r.of_kind(optional) == [], optional
    assert not any(d["metadata"]["name"].endswith("-gateway") for d in r.manifests)


def test_every_option_renders_its_objects(full_render: Render) -> None:
    r = full_render
    assert len(r.of_kind("ServiceMonitor")) == 1
    assert r.named("Deployment", f"{fullname()}-gateway")
    job = r.named("Job", f"{fullname()}-topics")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["topics", "create"]
    assert env_value(container, "RDV_PARTITIONS") == str(r.values["topics"]["partitions"])
    assert r.named("ConfigMap", f"{fullname()}-rendezvous-schedule")


def test_every_mounted_secret_is_readable_by_the_pods_user_and_group_alone(full_render: Render) -> None:
    """Mounted with Kubernetes' default mode (0644), the gateway's TLS key and the Kafka client's
    TLS material were readable by every user of the container (a security review)."""
    r = full_render
    secrets = [(w["metadata"]["name"], v) for w in r.workloads()
               for v in pod_spec(w).get("volumes", []) if "secret" in v]
    named = {v["name"] for _, v in secrets}
    assert {"kafka-tls", "gateway-tls", "api-keys"} <= named
    assert all(v["secret"].get("defaultMode") == 0o440 for _, v in secrets), secrets
    assert pod_spec(r.named("Deployment", f"{fullname()}-gateway"))["securityContext"]["fsGroup"] == 10001


def test_servicemonitor_and_keda_only_when_enabled(helm: Path, tmp_path: Path) -> None:
    off = render(helm, "-f", str(ALL_OPTIONS), "--set", "serviceMonitor.enabled=false,keda.enabled=false")
    assert [m for m in off if m["kind"] in ("ServiceMonitor", "ScaledObject")] == []
    # A model may switch KEDA on for itself alone.
    models = merged_values()["models"]
    models[1]["keda"] = {"enabled": True}
    values = tmp_path / "one-scaled.yaml"
    values.write_text(yaml.safe_dump({"keda": {"enabled": False}, "models": models}))
    one = render(helm, "-f", str(values))
    scaled = [m for m in one if m["kind"] == "ScaledObject"]
    assert [m["spec"]["scaleTargetRef"]["name"] for m in scaled] == [f"{fullname()}-model-{models[1]['name']}"]


def test_gateway_service_has_http_and_grpc_ports(full_render: Render) -> None:
    r = full_render
    gateway = r.values["gateway"]
    service = r.named("Service", f"{fullname()}-gateway")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    # The API ports alone: a LoadBalancer published the plain-HTTP metrics port beside them (a review).
    assert ports == {"http": gateway["httpPort"], "grpc": gateway["grpcPort"]}
    assert service["spec"]["type"] == gateway["service"]["type"] == "LoadBalancer"
    metrics = r.named("Service", f"{fullname()}-gateway-metrics")
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", r.values["metricsPort"])]
    assert metrics["spec"]["type"] == "ClusterIP"
    (container,) = pod_spec(r.named("Deployment", f"{fullname()}-gateway"))["containers"]
    assert container["args"][0] == "gateway"


def test_every_gateway_variable_is_a_setting_of_the_gateway_command(full_render: Render) -> None:
    r = full_render
    (container,) = pod_spec(r.named("Deployment", f"{fullname()}-gateway"))["containers"]
    gateway = r.values["gateway"]
    assert env_value(container, "RDV_HTTP_PORT") == str(gateway["httpPort"])
    assert env_value(container, "RDV_GRPC_PORT") == str(gateway["grpcPort"])
    assert env_value(container, "RDV_COMPARISON_URL") == (
        f"http://{fullname()}-comparison:{r.values['metricsPort']}/metrics")
    # Both rate limits, calls and rows (--rate-limit-rows was not in the chart: a key's 1,000-row
    # calls cost what 1-row calls did, whatever the values said).
    limits = {"RDV_RATE_LIMIT": "rateLimit", "RDV_RATE_BURST": "rateBurst",
              "RDV_RATE_LIMIT_ROWS": "rateLimitRows", "RDV_RATE_BURST_ROWS": "rateBurstRows"}
    assert {name: env_value(container, name) for name in limits} == {
        name: str(gateway[key]) for name, key in limits.items()}
    assert float(gateway["rateLimitRows"]) > 0  # the all-options values set it, so the check below means something
    from services.gateway.settings import GatewaySettings

    GatewaySettings(rate_limit=float(env_value(container, "RDV_RATE_LIMIT")),
                    rate_burst=int(env_value(container, "RDV_RATE_BURST")),
                    rate_limit_rows=float(env_value(container, "RDV_RATE_LIMIT_ROWS")),
                    rate_burst_rows=int(env_value(container, "RDV_RATE_BURST_ROWS"))).validate()
    # Keys and certificate come from Secrets mounted read-only where the variables point.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert env_value(container, "RDV_API_KEYS_FILE") == f"{mounts['api-keys']['mountPath']}/{gateway['apiKeys']['key']}"
    assert env_value(container, "RDV_TLS_CERT").startswith(mounts["gateway-tls"]["mountPath"])
    assert all(mounts[n]["readOnly"] for n in ("api-keys", "gateway-tls"))
    volumes = {v["name"]: v for v in pod_spec(r.named("Deployment", f"{fullname()}-gateway"))["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == gateway["apiKeys"]["existingSecret"]
    assert volumes["gateway-tls"]["secret"]["secretName"] == gateway["tls"]["existingSecret"]


# --- every container ---------------------------------------------------------------------------


# The settings class of each command a container runs (its first arguments).
COMMAND_SETTINGS = {
    ("model", "serve"): "services.model_worker.settings:WorkerSettings",
    ("serve",): "services.rendezvous.settings:RendezvousSettings",
    ("comparison", "serve"): "services.comparison.settings:ComparisonSettings",
    ("decoy", "serve"): "services.decoy.settings:DecoySettings",
    ("gateway",): "services.gateway.settings:GatewaySettings",
    ("topics", "create"): "services.cli.main:TopicSettings",
}


def _settings_of(args: list[str]) -> type:
    for words, where in COMMAND_SETTINGS.items():
        if tuple(args[: len(words)]) == words:
            module, name = where.split(":")
            settings: type = getattr(importlib.import_module(module), name)
            return settings
    raise AssertionError(f"no settings class known for the command {args}")


def test_every_variable_a_container_gets_is_a_setting_of_its_command(each_render: Render) -> None:
    """The chart speaks each command's language: a variable no setting reads would be a value
    that silently does nothing."""
    from services.core.settings import _env_name

    for workload, container in each_render.containers():
        known = {_env_name(f) for f in dataclasses.fields(_settings_of(container["args"]))}
        names = {n for n in env_of(container) if n.startswith("RDV_") or n == "KAFKA_BOOTSTRAP_SERVERS"}
        assert names <= known, f"{workload['metadata']['name']}: {sorted(names - known)} set but read by no setting"


def test_every_container_probes_healthz_and_readyz_on_the_metrics_port(each_render: Render) -> None:
    r = each_render
    port = r.values["metricsPort"]
    checked = 0
    for workload, container in r.containers():
        if workload["kind"] == "Job":
            continue  # the topics Job runs to completion; it serves nothing
        where = f"{workload['metadata']['name']}/{container['name']}"
        named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named_ports.get("metrics") == port, where
        assert env_value(container, "RDV_METRICS_PORT") == str(port), where
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, where
            assert get["port"] in ("metrics", port), where
        checked += 1
    assert checked == len(long_running(r))


def test_every_container_runs_as_non_root_on_a_read_only_root(each_render: Render) -> None:
    r = each_render
    for workload, container in r.containers():
        where = workload["metadata"]["name"]
        assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True, where
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") == "tmp", where  # the one writable place besides the archive
        assert container.get("resources"), where


def test_every_container_reaches_the_configured_kafka(each_render: Render) -> None:
    r = each_render
    kafka = r.values["kafka"]
    for workload, container in r.containers():
        where = workload["metadata"]["name"]
        assert env_value(container, "KAFKA_BOOTSTRAP_SERVERS") == kafka["bootstrap"], where
        assert env_value(container, "RDV_TOPIC_PREFIX") == kafka["topicPrefix"], where
        if kafka["topics"]:
            overrides = dict(pair.split("=", 1) for pair in env_value(container, "RDV_TOPIC").split(","))
            assert overrides == kafka["topics"], where


def test_env_names_are_unique_in_every_container(each_render: Render) -> None:
    for workload, container in each_render.containers():
        names = [entry["name"] for entry in container.get("env", [])]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        assert duplicates == [], f"{workload['metadata']['name']}: {duplicates}"


# --- models --------------------------------------------------------------------------------------


def test_each_model_has_its_deployment_group_and_settings(each_render: Render) -> None:
    r = each_render
    prefix = r.values["kafka"]["topicPrefix"]
    for model in r.values["models"]:
        deployment = r.named("Deployment", f"{fullname()}-model-{model['name']}")
        (container,) = pod_spec(deployment)["containers"]
        assert container["args"][:2] == ["model", "serve"]
        assert env_value(container, "RDV_MODEL") == model["spec"]
        assert env_value(container, "RDV_NAME") == model["name"]
        co_hosted = model.get("coHost", [])
        names = [model["name"], *(m["name"] for m in co_hosted)]
        assert env_value(container, "RDV_GROUP") == f"{prefix}model.{'+'.join(names)}"
        if co_hosted:
            assert env_value(container, "RDV_CO_HOST") == ",".join(f"{m['name']}={m['spec']}" for m in co_hosted)
        else:
            assert "RDV_CO_HOST" not in env_of(container)
        if model.get("version"):
            assert env_value(container, "RDV_VERSION") == model["version"]
        else:
            assert "RDV_VERSION" not in env_of(container)
        instance = env_of(container)["RDV_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert instance == "metadata.name"
        image = {**r.values["image"], **model.get("image", {})}
        assert container["image"] == f"{image['repository']}:{image['tag'] or APP_VERSION}"
        assert container["resources"] == model.get("resources", r.values["modelDefaults"]["resources"])


def test_model_replicas_belong_to_keda_when_it_scales_them(each_render: Render) -> None:
    r = each_render
    scaled = {m["spec"]["scaleTargetRef"]["name"] for m in r.of_kind("ScaledObject")}
    for model in r.values["models"]:
        name = f"{fullname()}-model-{model['name']}"
        keda_on = {**r.values["keda"], **model.get("keda", {})}["enabled"]
        assert (name in scaled) == keda_on, name
        spec = r.named("Deployment", name)["spec"]
        if keda_on:
            assert "replicas" not in spec, f"{name}: an upgrade would reset KEDA's choice"
        else:
            assert spec["replicas"] == model["replicas"], name


def test_keda_scales_each_model_on_its_own_groups_lag_on_the_requests_topic(full_render: Render) -> None:
    r = full_render
    assert r.of_kind("ScaledObject"), "the all-options values enable KEDA"
    requests_topic = r.values["kafka"]["topics"].get("requests", r.values["kafka"]["topicPrefix"] + "requests")
    for scaled in r.of_kind("ScaledObject"):
        deployment = r.named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        (container,) = pod_spec(deployment)["containers"]
        model = next(m for m in r.values["models"] if m["name"] == env_value(container, "RDV_NAME"))
        keda = {**r.values["keda"], **model.get("keda", {})}
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env_value(container, "RDV_GROUP")
        assert meta["topic"] == requests_topic
        assert meta["bootstrapServers"] == env_value(container, "KAFKA_BOOTSTRAP_SERVERS")
        assert meta["lagThreshold"] == str(keda["lagThreshold"])
        assert scaled["spec"]["maxReplicaCount"] == keda["maxReplicas"]
        assert scaled["spec"]["minReplicaCount"] == keda["minReplicas"]
        assert trigger["authenticationRef"]["name"] == keda["authenticationRef"]


def test_co_hosted_models_share_a_worker_its_group_and_the_schedule(helm: Path, tmp_path: Path) -> None:
    values = {"models": [{"name": "champion", "spec": "demo:champion",
                          "coHost": [{"name": "challenger", "spec": "demo:challenger"}]},
                         {"name": "canary", "spec": "demo:canary"}],
              "keda": {"enabled": True}}
    path = tmp_path / "co-host.yaml"
    path.write_text(yaml.safe_dump(values))
    r = Render("co-host", merged_values(path), render(helm, "-f", str(path)))
    prefix = r.values["kafka"]["topicPrefix"]
    assert {d["metadata"]["name"] for d in r.of_kind("Deployment")} >= {
        f"{fullname()}-model-champion", f"{fullname()}-model-canary"}
    assert not [d for d in r.of_kind("Deployment") if d["metadata"]["name"].endswith("-challenger")]
    (worker,) = pod_spec(r.named("Deployment", f"{fullname()}-model-champion"))["containers"]
    assert env_value(worker, "RDV_CO_HOST") == "challenger=demo:challenger"
    assert env_value(worker, "RDV_GROUP") == f"{prefix}model.champion+challenger"
    scaled = r.named("ScaledObject", f"{fullname()}-model-champion")
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == f"{prefix}model.champion+challenger"
    (rendezvous,) = pod_spec(r.named("StatefulSet", f"{fullname()}-rendezvous"))["containers"]
    assert env_value(rendezvous, "RDV_MODELS") == "champion,challenger,canary"


# --- rendezvous, comparison, decoy -------------------------------------------------------------


def test_the_rendezvous_statefulset_passes_its_pod_name_as_the_instance(each_render: Render) -> None:
    r = each_render
    settings = r.values["rendezvous"]
    stateful = r.named("StatefulSet", f"{fullname()}-rendezvous")
    assert stateful["spec"]["replicas"] == settings["replicas"]
    (container,) = pod_spec(stateful)["containers"]
    assert container["args"][0] == "serve"
    instance = env_of(container)["RDV_INSTANCE"]
    assert "value" not in instance
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env_value(container, "RDV_PROCESSING") == settings["processing"]
    # The governing Service exists and is headless: each pod keeps a DNS name.
    governing = r.named("Service", stateful["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    # SIGTERM drains for drainTimeoutS: the kubelet must wait longer than that.
    assert pod_spec(stateful)["terminationGracePeriodSeconds"] > settings["drainTimeoutS"]


def test_the_rendezvous_follows_the_models_or_the_schedule_file(each_render: Render) -> None:
    r = each_render
    settings = r.values["rendezvous"]
    (container,) = pod_spec(r.named("StatefulSet", f"{fullname()}-rendezvous"))["containers"]
    env = env_of(container)
    if settings["schedule"]:
        mount = next(m for m in container["volumeMounts"] if m["name"] == "schedule")
        assert env_value(container, "RDV_SCHEDULE_FILE").startswith(mount["mountPath"] + "/")
        data = r.named("ConfigMap", f"{fullname()}-rendezvous-schedule")["data"]["schedule.json"]
        assert yaml.safe_load(data) == settings["schedule"]
    else:
        expected = settings["models"] or [m["name"] for m in r.values["models"]]
        assert env_value(container, "RDV_MODELS") == ",".join(expected)
        assert "RDV_SCHEDULE_FILE" not in env


def test_the_decoy_archives_on_its_own_volume_claim(each_render: Render) -> None:
    r = each_render
    decoy = r.named("StatefulSet", f"{fullname()}-decoy")
    (claim,) = decoy["spec"]["volumeClaimTemplates"]
    persistence = r.values["decoy"]["persistence"]
    assert claim["spec"]["resources"]["requests"]["storage"] == persistence["size"]
    (container,) = pod_spec(decoy)["containers"]
    archive = env_value(container, "RDV_ARCHIVE_DIR")
    assert {"name": claim["metadata"]["name"], "mountPath": archive} in container["volumeMounts"]
    assert decoy["spec"]["replicas"] == 1


def test_comparison_runs_one_replica_never_two_at_once(each_render: Render) -> None:
    comparison = each_render.named("Deployment", f"{fullname()}-comparison")
    assert comparison["spec"]["replicas"] == 1
    assert comparison["spec"]["strategy"]["type"] == "Recreate"


# --- labels and selectors ----------------------------------------------------------------------


def test_each_workload_selects_its_own_pods_and_no_others(each_render: Render) -> None:
    r = each_render
    workloads = long_running(r)
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        selected = [w["metadata"]["name"] for w in workloads if matches(selector, pod_labels(w))]
        assert selected == [workload["metadata"]["name"]]


def test_each_service_selects_exactly_one_workload_with_its_ports(each_render: Render) -> None:
    r = each_render
    workloads = long_running(r)
    for service in r.of_kind("Service"):
        selected = [w for w in workloads if matches(service["spec"]["selector"], pod_labels(w))]
        assert len(selected) == 1, service["metadata"]["name"]
        (container,) = pod_spec(selected[0])["containers"]
        container_ports = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, service["metadata"]["name"]


def test_the_servicemonitor_scrapes_every_long_running_pod(full_render: Render) -> None:
    r = full_render
    (monitor,) = r.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    for key, value in r.values["serviceMonitor"]["labels"].items():
        assert monitor["metadata"]["labels"][key] == value
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in r.of_kind("Service") if matches(selector, s["metadata"]["labels"])]
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    covered = {
        w["metadata"]["name"]
        for s in scraped
        for w in long_running(r)
        if matches(s["spec"]["selector"], pod_labels(w))
    }
    assert covered == {w["metadata"]["name"] for w in long_running(r)}


def test_the_disruption_budget_covers_only_the_rendezvous(each_render: Render) -> None:
    r = each_render
    (budget,) = r.of_kind("PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    covered = [w["metadata"]["name"] for w in long_running(r) if matches(selector, pod_labels(w))]
    assert covered == [f"{fullname()}-rendezvous"]


def test_every_object_carries_the_release_labels_and_a_valid_name(each_render: Render) -> None:
    for manifest in each_render.manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        name = manifest["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name


# --- secrets -------------------------------------------------------------------------------------

SECRET_VALUE = re.compile(r"(?P<key>[A-Za-z0-9_.-]+)=(?P<value>[^;]*)")


def principal_of(workload: Manifest) -> str:
    """The kafka.principals entry of a workload's pods."""
    component = pod_labels(workload)["app.kubernetes.io/component"]
    return "models" if component == "model" else component


def kafka_config_of(values: dict[str, Any], workload: Manifest) -> dict[str, Any]:
    own = values["kafka"].get("principals", {}).get(principal_of(workload), {})
    return {**values["kafka"]["config"], **own.get("config", {})}


def secret_config_of(values: dict[str, Any], workload: Manifest) -> dict[str, dict[str, str]]:
    """Each secret setting of a workload's pods -> its entry: the component's over the shared ones."""
    own = values["kafka"].get("principals", {}).get(principal_of(workload), {})
    return {e["key"]: e for e in [*values["kafka"]["secretConfig"], *own.get("secretConfig", [])]}


def test_each_component_runs_as_its_own_principal_when_given_one(full_render: Render) -> None:
    """One kafka.config for every pod made the least-privilege layout impossible to deploy: with
    topics.create the shared principal had to be the admin, internet-facing gateway included (a
    review). The gateway and the topics Job of the all-options values have principals of their own."""
    users: dict[str, set[str]] = {}
    for workload, container in full_render.containers():
        config = dict(pair.split("=", 1) for pair in env_value(container, "RDV_KAFKA_CONFIG").split(";"))
        values = full_render.values
        assert set(config) == {*kafka_config_of(values, workload), *secret_config_of(values, workload)}
        assert config["sasl.username"] == kafka_config_of(values, workload)["sasl.username"]
        users.setdefault(config["sasl.username"], set()).add(principal_of(workload))
    assert users == {"rdv-gateway": {"gateway"}, "rdv-admin": {"topics"},
                     "rendezvous": {"rendezvous", "models", "comparison", "decoy"}}


def test_no_secret_value_is_rendered_and_secrets_come_from_existing_secrets(each_render: Render) -> None:
    r = each_render
    assert r.of_kind("Secret") == []
    for workload, container in r.containers():
        where = workload["metadata"]["name"]
        wanted = secret_config_of(r.values, workload)
        env = container.get("env", [])
        defined_from_secrets: dict[str, dict[str, str]] = {}
        for entry in env:
            if "valueFrom" in entry and "secretKeyRef" in entry["valueFrom"]:
                defined_from_secrets[entry["name"]] = entry["valueFrom"]["secretKeyRef"]
            # No secret-looking variable carries a literal value.
            assert not ("value" in entry and SECRET_NAME.search(entry["name"])), f"{where}: {entry['name']}"
            if entry["name"] != "RDV_KAFKA_CONFIG":
                continue
            seen = set()
            for pair in SECRET_VALUE.finditer(entry["value"]):
                if not SECRET_NAME.search(pair["key"].replace(".", "_")):
                    continue
                # A secret setting is only ever a reference to a variable defined above it
                # from a Secret, which the kubelet expands in the pod.
                reference = re.fullmatch(r"\$\((\w+)\)", pair["value"])
                assert reference, f"{where}: {pair['key']} is given inline"
                source = defined_from_secrets.get(reference.group(1))
                assert source is not None, f"{where}: $({reference.group(1)}) is not from a Secret defined before"
                assert source == {"name": wanted[pair["key"]]["secretName"], "key": wanted[pair["key"]]["secretKey"]}
                seen.add(pair["key"])
            assert seen == set(wanted), where


def test_a_secret_given_inline_is_refused_and_never_rendered(helm: Path) -> None:
    sentinel = "hunter2-never-render-me"
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", f"kafka.config.sasl\\.password={sentinel}")
    assert done.returncode != 0
    assert "kafka.secretConfig" in done.stderr
    assert sentinel not in done.stdout


# The settings the chart takes inline though the services mask their values: a user name, and paths
# of files mounted from Secrets (the files are the secret).
INLINE_DESPITE_MASKED = {"sasl.username", "ssl.key.location", "ssl.engine.location", "sasl.kerberos.keytab",
                         "sasl.oauthbearer.assertion.private.key.file"}


def test_every_setting_the_services_keep_secret_is_refused_inline(helm: Path) -> None:
    """The chart spotted secrets by words (password, token, ...): an OAuth client's
    `sasl.oauthbearer.config=clientSecret=...` was rendered into every manifest (a review)."""
    from services.core.kafka_config import SECRET

    sentinel = "hunter2-never-render-me"
    for key in sorted(SECRET - INLINE_DESPITE_MASKED):
        escaped = key.replace(".", "\\.")
        done = run_helm(helm, "template", RELEASE, str(CHART), "--set-string", f"kafka.config.{escaped}={sentinel}")
        assert done.returncode != 0 and "kafka.secretConfig" in done.stderr, key
        assert sentinel not in done.stdout, key


def test_the_notes_print_a_topics_create_command_for_these_values(helm: Path, tmp_path: Path) -> None:
    """They said --partitions 4 whatever topics.partitions was, and left out renamed topics: pods
    stayed unready on the topics that command made (a review). Rendered here through a template of
    a copy of the chart (helm prints NOTES.txt only when it installs)."""
    import shutil

    from services.cli.main import build_parser

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "notes-check.yaml").write_text(
        '{{- define "notes.text" -}}\n' + notes + '\n{{- end -}}\nnotes: {{ include "notes.text" . | toJson }}\n')
    done = run_helm(helm, "template", RELEASE, str(chart), "--show-only", "templates/notes-check.yaml",
                    "--set", "topics.create=false", "--set", "topics.partitions=12",
                    "--set", "kafka.topics.models=prod.signatures", "--set", "kafka.topics.requests=prod.inbound")
    assert done.returncode == 0, done.stderr
    [line] = [line for line in yaml.safe_load(done.stdout)["notes"].splitlines() if "topics create" in line]
    argv = line.split()[1:]
    assert argv[:2] == ["topics", "create"] and argv[argv.index("--partitions") + 1] == "12"
    renamed = {argv[i + 1] for i, flag in enumerate(argv) if flag == "--topic"}
    assert renamed == {"models=prod.signatures", "requests=prod.inbound"}
    build_parser(argv).parse_args(argv)  # the CLI takes it as printed


# --- values that must be refused -----------------------------------------------------------------


def two_models_named(first: str, second: str) -> dict[str, Any]:
    return {"models": [{"name": first, "spec": "demo:champion"}, {"name": second, "spec": "demo:challenger"}]}


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (two_models_named("champion", "champion"), "listed twice"),
        (two_models_named("champion", "Challenger_1"), "/models/1/name"),
        ({"models": [{"name": "a", "spec": "demo:champion", "coHost": [{"name": "a", "spec": "demo:canary"}]}]},
         "listed twice (coHost of a)"),
        ({"models": [{"name": "a", "spec": "demo:champion", "coHost": [{"name": "b", "spec": "x,y"}]}]},
         "/models/0/coHost/0/spec"),
        ({"kafka": {"config": {"client.id": "a;b"}}}, "';'"),
        ({"kafka": {"config": {"bootstrap.servers": "b:9092"}}}, "the brokers are kafka.bootstrap"),
        ({"kafka": {"secretConfig": [{"key": "bootstrap.servers", "secretName": "k", "secretKey": "b"}]}},
         "the brokers are kafka.bootstrap"),
        ({"kafka": {"topics": {"answerz": "x"}}}, "answerz"),
        ({"rendezvous": {"processing": "maybe-once"}}, "/rendezvous/processing"),
        ({"kafka": {"bootstrap": ""}}, "/kafka/bootstrap"),
        ({"kafka": {"secretConfig": [{"key": "sasl.password", "secretName": "kafka"}]}}, "secretKey"),
        ({"topics": {"create": True, "partitions": 2}, "rendezvous": {"replicas": 3}},
         "would own no partition (ready, but idle standbys)"),
        # The probe is sized from predictTimeoutS: the flag or the variable would win over it (a review).
        ({"models": [{"name": "m", "spec": "demo:champion", "args": ["--predict-timeout-s", "200"]}]},
         "set predictTimeoutS, not --predict-timeout-s in args"),
        ({"models": [{"name": "m", "spec": "demo:champion", "env": [{"name": "RDV_PREDICT_TIMEOUT_S", "value": "9"}]}]},
         "set predictTimeoutS, not RDV_PREDICT_TIMEOUT_S in env"),
    ],
    ids=[
        "duplicate-model",
        "bad-model-name",
        "co-hosted-twice",
        "comma-in-co-hosted-spec",
        "separator-in-config",
        "brokers-in-config",
        "brokers-in-secret-config",
        "unknown-topic-role",
        "bad-processing",
        "no-bootstrap",
        "secret-without-key",
        "more-rendezvous-than-partitions",
        "predict-timeout-flag",
        "predict-timeout-variable",
    ],
)
def test_bad_values_are_refused_with_a_reason(
    helm: Path, tmp_path: Path, values: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    done = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(path))
    assert done.returncode != 0, f"{values} rendered"
    assert reason in done.stderr, done.stderr


# --- values a review found rendered wrong ------------------------------------------------------


def test_values_render_as_given_whatever_their_size_or_zero(helm: Path, tmp_path: Path) -> None:
    """1000000 rendered as 1e+06 (librdkafka read message.max.bytes=1); replicas 0 rendered as 1;
    a long model name made a Service name the API refuses; the gateway was not told the schedule."""
    long_name = "fraud-detector-gradient-boosting-v12"
    values = {"kafka": {"config": {"message.max.bytes": 1000000, "linger.ms": 0.5}},
              "models": [{"name": long_name, "spec": "demo:champion", "replicas": 0}],
              "rendezvous": {"scheduleName": "fraud"},
              "gateway": {"enabled": True}}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    r = Render("review", merged_values(path), render(helm, "-f", str(path)))
    (deployment,) = [d for d in r.of_kind("Deployment") if "-model-" in d["metadata"]["name"]]
    (worker,) = pod_spec(deployment)["containers"]
    assert set(env_value(worker, "RDV_KAFKA_CONFIG").split(";")) >= {"message.max.bytes=1000000", "linger.ms=0.5"}
    assert deployment["spec"]["replicas"] == 0
    for service in r.of_kind("Service"):
        assert len(service["metadata"]["name"]) <= 63, service["metadata"]["name"]
    (gateway,) = pod_spec(r.named("Deployment", f"{fullname()}-gateway"))["containers"]
    assert env_value(gateway, "RDV_SCHEDULE") == "fraud"
    assert env_value(worker, "RDV_METRICS_HOST") == "0.0.0.0"  # probed whatever image it runs


def test_the_gateways_rate_limits_render_as_numbers_it_reads_whatever_their_size(helm: Path, tmp_path: Path) -> None:
    """A burst of a million rows rendered as 1e+06, which the gateway refuses as a whole number
    (it stopped at start); a rate stays as given, fractions included."""
    from services.core.settings import from_namespace
    from services.gateway.settings import GatewaySettings

    limits = {"rateLimit": 1500000, "rateBurst": 2000000, "rateLimitRows": 0.5, "rateBurstRows": 1000000}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"enabled": True, **limits}}))
    (gateway,) = pod_spec(Render("rates", merged_values(path), render(helm, "-f", str(path))).named(
        "Deployment", f"{fullname()}-gateway"))["containers"]
    env = {name: env_value(gateway, name) for name in
           ("RDV_RATE_LIMIT", "RDV_RATE_BURST", "RDV_RATE_LIMIT_ROWS", "RDV_RATE_BURST_ROWS")}
    assert env == {"RDV_RATE_LIMIT": "1500000", "RDV_RATE_BURST": "2000000", "RDV_RATE_LIMIT_ROWS": "0.5",
                   "RDV_RATE_BURST_ROWS": "1000000"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        read = from_namespace(GatewaySettings)
    assert (read.rate_limit, read.rate_burst, read.rate_limit_rows, read.rate_burst_rows) == (
        1500000.0, 2000000, 0.5, 1000000)


def test_more_gateways_than_reply_partitions_is_refused(helm: Path) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "gateway.enabled=true",
                    "--set", "topics.create=true", "--set", "gateway.replicas=5", "--set", "topics.partitions=4")
    assert done.returncode != 0 and "would never be ready" in done.stderr
    # Topics made elsewhere: topics.partitions is the Job's, not their count (it was compared all the same).
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "gateway.enabled=true",
                    "--set", "gateway.replicas=5", "--set", "topics.partitions=4")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("flags", "reason"), [
    (["gateway.grpcPort=8080"], "gateway.httpPort (8080), gateway.grpcPort (8080) and metricsPort (9100) must differ"),
    (["gateway.httpPort=9100"], "must differ"),
    (["gateway.maxConnections=20"], "must be above the 32 /ui viewers"),
])
def test_gateway_values_the_gateway_would_refuse_at_start_are_refused_at_render(
    helm: Path, flags: list[str], reason: str
) -> None:
    """Ports given twice rendered a Service the API server refuses, or a pod that exits at start."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "gateway.enabled=true",
                    *(arg for flag in flags for arg in ("--set", flag)))
    assert done.returncode != 0 and reason in done.stderr, done.stderr


def test_compose_publishes_its_ports_on_the_loopback_interface_only() -> None:
    """"9094:9094" binds every interface: anyone on the network could write the control topic of
    a broker without authentication, call a gateway without API keys, or stop Prometheus (a review)."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    published = {name: service.get("ports", []) for name, service in services.items() if service.get("ports")}
    assert published  # the broker, the gateway, Prometheus and Grafana
    for name, ports in published.items():
        assert all(str(port).startswith("127.0.0.1:") for port in ports), (name, ports)


def test_the_rendezvous_takes_the_settings_its_pods_are_given(
    each_render: Render, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a schedule the chart still set --wait and --deadline-ms, which the rendezvous refuses
    (they went without a word before): with every option on, its pods would not have started (a
    review). The pod's variables, its schedule file where the ConfigMap puts it, make settings
    that pass every check the command makes at start."""
    from services.core.settings import from_namespace
    from services.rendezvous.settings import RendezvousSettings

    r = each_render
    workload = r.named("StatefulSet", f"{fullname()}-rendezvous")
    (container,) = pod_spec(workload)["containers"]
    for name in [n for n in os.environ if n.startswith("RDV_")]:
        monkeypatch.delenv(name)
    given = {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}
    if "RDV_SCHEDULE_FILE" in given:
        config_map = r.named("ConfigMap", f"{fullname()}-rendezvous-schedule")
        (tmp_path / "schedule.json").write_text(config_map["data"]["schedule.json"])
        given["RDV_SCHEDULE_FILE"] = str(tmp_path / "schedule.json")
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    assert (r.name == "all-options") == ("RDV_SCHEDULE_FILE" in given)  # both ways are tried
    from_namespace(RendezvousSettings, None)


@pytest.mark.parametrize("extra", [["--set", "rendezvous.waitMs.champion=50"], ["--set", "rendezvous.deadlineMs=300"]])
def test_waits_and_a_deadline_beside_a_schedule_are_refused_at_render(helm: Path, extra: list[str]) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(ALL_OPTIONS), *extra)
    assert done.returncode != 0 and "with rendezvous.schedule they go in it" in done.stderr, done.stderr[-500:]


def test_a_model_worker_s_liveness_outlasts_its_batch_so_the_rescue_acts_first(helm: Path, tmp_path: Path) -> None:
    """A model holding the interpreter lock leaves /healthz unanswered: the default probe (60 s)
    restarted the pod before the rescue process acted (at 90 s for the default 60 s timeout), and
    the worker re-read the batch and hung again (a review). The probe now allows what the worker
    allows a batch: its models x the timeout + 60 s."""
    values = {"models": [{"name": "champion", "spec": "demo:champion", "predictTimeoutS": 120,
                          "coHost": [{"name": "challenger", "spec": "demo:challenger"}]},
                         {"name": "canary", "spec": "demo:canary", "predictTimeoutS": 0},
                         {"name": "slow", "spec": "demo:slow"}]}
    path = tmp_path / "timeouts.yaml"
    path.write_text(yaml.safe_dump(values))
    r = Render("timeouts", merged_values(path), render(helm, "-f", str(path)))
    period = r.values["probes"]["liveness"]["periodSeconds"]
    given = r.values["probes"]["liveness"]["failureThreshold"]
    for name, timeout, models in (("champion", 120, 2), ("canary", 0, 1), ("slow", 60, 1)):
        (worker,) = pod_spec(r.named("Deployment", f"{fullname()}-model-{name}"))["containers"]
        assert float(env_value(worker, "RDV_PREDICT_TIMEOUT_S")) == timeout
        # A restart comes after failureThreshold failed probes, the first up to a period into the stall.
        allowed = (worker["livenessProbe"]["failureThreshold"] - 1) * period
        if timeout:
            assert allowed > stalled_after_s(timeout, models)
        else:
            assert worker["livenessProbe"]["failureThreshold"] == given  # no limit: the probe as given


def test_whole_numbers_of_a_million_or_more_render_as_written(helm: Path, tmp_path: Path) -> None:
    """YAML reads 1200000 as a float, and `quote` wrote "1.2e+06": the rendezvous refused it at start
    (a review). Every number the services read whole goes through rdv.scalar."""
    values = tmp_path / "big.yaml"
    values.write_text(yaml.safe_dump({"rendezvous": {"transactionTimeoutMs": 1_200_000, "deadlineMs": 1_000_000},
                                      "topics": {"partitions": 1_000_000},
                                      "decoy": {"enabled": True, "rollSeconds": 1_000_000}}))
    rendered = render(helm, "-f", str(values))
    env = {name: spec.get("value") for doc in rendered if doc["kind"] in ("Deployment", "StatefulSet", "Job")
           for container in pod_spec(doc)["containers"] for name, spec in env_of(container).items()}
    assert (env["RDV_TRANSACTION_TIMEOUT_MS"], env["RDV_DEADLINE_MS"], env["RDV_ROLL_SECONDS"]) == (
        "1200000", "1000000", "1000000")
    assert [v for v in env.values() if isinstance(v, str) and "e+" in v] == []


def test_the_topics_job_gets_the_pod_settings_every_pod_gets(full_render: Render, helm: Path, tmp_path: Path) -> None:
    """values.yaml applies podLabels, podAnnotations and affinity to every pod: the hook's had none, and
    a mesh sidecar, a NetworkPolicy or a cloud identity keyed on them held the install (a review)."""
    (job,) = [m for m in full_render.manifests if m["kind"] == "Job"]
    template = job["spec"]["template"]
    values = full_render.values
    assert values["podLabels"].items() <= template["metadata"]["labels"].items()
    assert values["podAnnotations"].items() <= template["metadata"].get("annotations", {}).items()
    assert template["spec"]["affinity"] == values["affinity"]
    assert "serviceAccountName" not in template["spec"]  # the release's own does not exist yet at a pre-install hook
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump({"serviceAccount": {"create": False, "name": "kafka-iam"},
                                     "topics": {"create": True}}))
    (job,) = [m for m in render(helm, "-f", str(named)) if m["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "kafka-iam"


def test_two_models_whose_object_names_the_63_character_cut_makes_equal_are_refused(helm: Path,
                                                                                    tmp_path: Path) -> None:
    """They got one Deployment and Service between them: one model was never deployed (a review)."""
    values = tmp_path / "long.yaml"
    values.write_text(yaml.safe_dump({"models": [{"name": "fraud-model-xgboost-v12", "spec": "demo:champion"},
                                                 {"name": "fraud-model-xgboost-v13", "spec": "demo:challenger"}]}))
    done = run_helm(helm, "template", "fraud-scoring-prod", str(CHART), "-f", str(values))
    assert done.returncode != 0
    assert ('models "fraud-model-xgboost-v12" and "fraud-model-xgboost-v13" both name their objects '
            "fraud-scoring-prod-rendezvous-serving-model-fraud-model-xgboost") in done.stderr
    assert run_helm(helm, "template", "fraud", str(CHART), "-f", str(values)).returncode == 0  # a shorter release


def test_the_gateway_waits_for_its_endpoints_to_go_before_it_drains(full_render: Render) -> None:
    """Its SIGTERM came while the Service still routed calls to it: they met the drain's 503s."""
    (gateway,) = [m for m in full_render.of_kind("Deployment") if m["metadata"]["name"].endswith("-gateway")]
    spec = pod_spec(gateway)
    (container,) = spec["containers"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    drain = int(full_render.values["gateway"]["drainTimeoutS"])
    assert spec["terminationGracePeriodSeconds"] >= drain + 5 + 10  # the wait, the drain, and room to leave
