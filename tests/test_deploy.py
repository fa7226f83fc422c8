"""The Kubernetes manifests agree with the code: every service runs a module that exists,
on the port it listens on, probed with its own gRPC health service name; every target in
the config names a Service and port that exist; every container is bounded."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = ("local", "gpu", "tls")


def _documents(folder: Path = BASE) -> list[dict]:
    """The objects of one kustomization (deploy/base; deploy/training: the Job)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml lists {listed}, {folder} holds {on_disk}"
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((folder / name).read_text()) if doc]


def _every_document() -> list[dict]:
    return _documents() + _documents(DEPLOY / "training")


def _workloads() -> list[dict]:
    return [d for d in _documents() if d["kind"] in ("Deployment", "StatefulSet")]


def _config() -> dict[str, str]:
    return next(d for d in _documents() if d["kind"] == "ConfigMap")["data"]


def test_every_service_runs_its_server_on_the_port_it_listens_on() -> None:
    servers = [w for w in _workloads() if w["metadata"]["name"] not in ("redis", "gateway")]
    assert {w["metadata"]["name"] for w in servers} == {"vision", "word", "graph", "user",
                                                          "recommender"}
    for workload in servers:
        name = workload["metadata"]["name"]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", f"services.{name}.server"]
        module = importlib.import_module(f"services.{name}.server")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (int(module.DEFAULT_PORT), int(module.DEFAULT_METRICS_PORT)) == (
            ports["grpc"], ports["metrics"]), name
        assert _config()[f"HASHREC_{name.upper()}_HOST"] == "0.0.0.0"  # reachable
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": ports["grpc"],
                                                "service": module.SERVICE_NAME}, name
        assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]


def test_every_configured_target_is_a_service_port() -> None:
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
                for d in _documents() if d["kind"] == "Service"}
    targets = {k: v for k, v in _config().items() if k.endswith("_TARGET")}
    assert set(targets) == {"HASHREC_VISION_TARGET", "HASHREC_WORD_TARGET",
                            "HASHREC_GRAPH_TARGET", "HASHREC_USER_TARGET",
                            "HASHREC_RECOMMENDER_TARGET"}
    for key, target in [*((k, t) for k, v in targets.items() for t in v.split(",")),
                        ("HASHREC_REDIS_URL", _config()["HASHREC_REDIS_URL"])]:
        # a StatefulSet pod's own name (user-0.user) is its Service's too
        host, port = re.fullmatch(r"(?:redis://|dns:///)?(?:[a-z]+-\d+\.)?([a-z-]+):(\d+)"
                                  r"(?:/\d+)?", target).groups()
        assert int(port) in services.get(host, set()), f"{key}={target}: no such Service"


def test_each_user_shard_is_a_pod_of_its_own_named_in_shard_order() -> None:
    """HASHREC_USER_SHARDS pods, pod user-i told it is shard i, and the recommender's
    user targets the pods in that order: a user's calls reach the pod that owns them."""
    shards = int(_config()["HASHREC_USER_SHARDS"])
    user = next(w for w in _workloads() if w["metadata"]["name"] == "user")
    assert user["kind"] == "StatefulSet" and user["spec"]["replicas"] == shards > 1
    env = {e["name"]: e for e in user["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HASHREC_USER_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert _config()["HASHREC_USER_TARGET"].split(",") == [
        f"dns:///user-{i}.user:50054" for i in range(shards)]
    assert "state" in {c["metadata"]["name"] for c in user["spec"]["volumeClaimTemplates"]}


def test_grpc_clients_reach_every_pod_of_a_headless_service_round_robin() -> None:
    """A ClusterIP Service pins each gRPC connection to one pod (kube-proxy balances
    connections, not calls): the targets resolve every pod and the channels balance."""
    import json

    from shared.grpc_server import CHANNEL_OPTIONS

    headless = {d["metadata"]["name"] for d in _documents()
                if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"}
    grpc_targets = {k: v for k, v in _config().items() if k.endswith("_TARGET")}
    for key, targets in grpc_targets.items():
        for target in targets.split(","):
            assert target.startswith("dns:///"), key
            host = target.removeprefix("dns:///").split(":")[0]
            assert host.rsplit(".", 1)[-1] in headless, key
    config = json.loads(dict(CHANNEL_OPTIONS)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert float(_config()["HASHREC_MAX_CONNECTION_AGE_S"]) > 0


def test_every_container_is_bounded_and_its_volumes_exist() -> None:
    pods = [w["spec"]["template"]["spec"] for w in _workloads()]
    pods += [d["spec"]["template"]["spec"] for d in _every_document() if d["kind"] == "Job"]
    for pod in pods:
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod.get("initContainers", []) + pod["containers"]:
            resources = container["resources"]
            assert set(resources) == {"requests", "limits"}, container["name"]
            assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] == "state", mount


def _render(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the checks of the files still ran")
    rendered = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True,
                              text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


def test_kustomize_renders_the_manifests() -> None:
    kinds = [d["kind"] for d in _render(BASE)]
    assert kinds.count("Service") == 7 and "Namespace" in kinds and "Ingress" in kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_valid_strict_kubernetes(overlay: str) -> None:
    import kubernetes_validate

    documents = _render(DEPLOY / "overlays" / overlay)
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in documents
            if d["kind"] in ("Deployment", "StatefulSet")}
    assert not any(_restricted_problems(pod) for pod in pods.values())  # still restricted
    if overlay == "local":  # one small pod of everything
        assert all(d["spec"].get("replicas") == 1 for d in documents
                   if d["kind"] in ("Deployment", "StatefulSet"))
        assert all(d["spec"]["maxReplicas"] == 1 for d in documents
                   if d["kind"] == "HorizontalPodAutoscaler")
        config = next(d for d in documents if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"] == "hashrec-config")["data"]
        assert config["HASHREC_USER_SHARDS"] == "1"  # as many shards as user pods
        assert config["HASHREC_USER_TARGET"] == "dns:///user-0.user:50054"
        assert all(pod["containers"][0]["resources"]["requests"]["cpu"] in ("100m", "50m")
                   for pod in pods.values())
    elif overlay == "tls":  # every gRPC server and client reads the Secret's files
        for name, pod in pods.items():
            if name == "redis":
                continue
            container = pod["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["HASHREC_TLS_CERT"] == "/tls/tls.crt", name
            assert env["HASHREC_TLS_KEY"] == "/tls/tls.key", name
            assert env["HASHREC_TLS_CA"] == "/tls/ca.crt", name
            assert {"name": "tls", "secret": {"secretName": "hashrec-tls"}} in pod["volumes"]
            assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in \
                container["volumeMounts"], name
            if name != "gateway":  # kubelet probes speak plaintext: the health port
                assert env["HASHREC_HEALTH_PORT"] == "8086"
                assert {container[probe]["grpc"]["port"] for probe in
                        ("startupProbe", "readinessProbe", "livenessProbe")} == {8086}
    else:  # vision on a GPU node, with the GPU image and batch
        vision = pods["vision"]
        container = vision["containers"][0]
        assert container["image"] == "hashrec:gpu"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert vision["nodeSelector"] and vision["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert {"name": "HASHREC_VISION_MAX_BATCH", "value": "32"} in container["env"]
        word = pods["word"]["containers"][0]
        assert "nvidia.com/gpu" not in word["resources"]["limits"]
        assert word["image"] == "hashrec:dev"  # the CUDA image only where it is used


#: the Kubernetes version the manifests are checked against (kubernetes-validate's newest)
KUBERNETES_VERSION = "1.37.0"


def test_every_manifest_is_valid_kubernetes_in_strict_mode() -> None:
    """Against the API's own schemas, unknown fields rejected (a misspelt or misplaced key
    is silently dropped by a lenient apply)."""
    import kubernetes_validate

    problems = []
    for document in _every_document():
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{document['kind']}/{document['metadata']['name']}: "
                            f"{'.'.join(map(str, error.path))}: {error.message}")
    assert not problems, "\n".join(problems)


def _restricted_problems(pod: dict) -> list[str]:
    """What breaks Pod Security "restricted" (kubernetes.io/docs/concepts/security/
    pod-security-standards), plus the service account token, which no hashrec pod needs."""
    problems = []
    pod_context = pod.get("securityContext", {})
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("mounts a service account token")
    if pod_context.get("seccompProfile", {}).get("type") not in ("RuntimeDefault",
                                                                  "Localhost"):
        problems.append("no RuntimeDefault seccomp profile")
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: may run as root")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: privilege escalation allowed")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities not dropped")
        if context.get("privileged") or set(context.get("capabilities", {}).get(
                "add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: privileged or added capabilities")
    return problems


def test_every_pod_meets_pod_security_restricted_and_the_namespace_enforces_it() -> None:
    pods = {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
            for d in _every_document() if d["kind"] in ("Deployment", "StatefulSet", "Job")}
    assert len(pods) == 8, sorted(pods)  # six services, Redis, the training Job
    problems = {name: _restricted_problems(pod) for name, pod in pods.items()}
    assert not any(problems.values()), {n: p for n, p in problems.items() if p}
    namespace = next(d for d in _documents() if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"


def test_the_restricted_check_finds_a_root_pod() -> None:
    redis = next(d for d in _documents() if d["metadata"]["name"] == "redis"
                 and d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert not _restricted_problems(redis)
    loose = {**redis, "securityContext": {}, "automountServiceAccountToken": True}
    assert len(_restricted_problems(loose)) == 3  # token, seccomp, root


def _app_containers() -> dict[str, tuple[dict, dict]]:
    """Each hashrec service's (pod spec, container)."""
    return {w["metadata"]["name"]: (w["spec"]["template"]["spec"],
                                    w["spec"]["template"]["spec"]["containers"][0])
            for w in _workloads() if w["metadata"]["name"] != "redis"}


def test_no_autoscaled_workload_sets_its_replicas() -> None:
    """An apply would reset the autoscaler's count to the file's."""
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in _documents()
              if d["kind"] == "HorizontalPodAutoscaler"}
    assert scaled == {"vision", "recommender"}
    assert not [w["metadata"]["name"] for w in _workloads()
                if w["metadata"]["name"] in scaled and "replicas" in w["spec"]]


def test_every_service_keeps_answering_while_endpoints_drop_it_and_probes_wait() -> None:
    for name, (pod, container) in _app_containers().items():
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        # the pause, then the server's own drain (5 s gRPC grace, 10 s uvicorn), in time
        assert pause + 10 < pod["terminationGracePeriodSeconds"], name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                assert container[probe].get("timeoutSeconds", 1) >= 2, (name, probe)


def test_thread_pools_follow_the_cpu_limit_not_the_nodes_cores() -> None:
    jobs = [d["spec"]["template"]["spec"] for d in _every_document() if d["kind"] == "Job"]
    containers = {n: c for n, (_, c) in _app_containers().items()}
    containers |= {"train": jobs[0]["containers"][0]}
    for name, container in containers.items():
        env = {e["name"]: e.get("valueFrom", {}) for e in container.get("env", [])}
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            assert env.get(variable, {}).get("resourceFieldRef", {}).get("resource") == \
                "limits.cpu", (name, variable)


def test_strict_validation_catches_a_misplaced_field() -> None:
    import kubernetes_validate

    service = next(d for d in _documents() if d["kind"] == "Service")
    broken = {**service, "spec": {**service["spec"], "replicas": 2}}  # not a Service field
    with pytest.raises(kubernetes_validate.ValidationError, match="replicas"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_gateway_serves_http_and_is_ready_when_the_recommender_is() -> None:
    from services.gateway import server

    gateway = next(w for w in _workloads() if w["metadata"]["name"] == "gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "services.gateway.server"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    paths = {getattr(route, "path", None)
             for route in server.create_app(server.Settings(auth="none")).routes}
    assert {"/readyz", "/healthz", "/metrics"} <= paths
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HASHREC_AUTH"] == "oidc" and env["HASHREC_GATEWAY_SECURE_COOKIES"] == "1"
    allowed = env["HASHREC_GATEWAY_ALLOWED_HOSTS"].split(",")
    for probe in ("readinessProbe", "livenessProbe"):  # kubelet's Host is the pod's IP
        headers = container[probe]["httpGet"]["httpHeaders"]
        assert {"name": "Host", "value": "localhost"} in headers and "localhost" in allowed
    assert _config()["HASHREC_GATEWAY_HOST"] == "0.0.0.0"
    assert "HASHREC_RECOMMENDER_TARGET" in server.__doc__
    assert "HASHREC_PHOTO_ROOT" in server.__doc__


def test_the_example_ingress_routes_neither_the_api_description_nor_the_metrics() -> None:
    ingress = next(d for d in _documents() if d["kind"] == "Ingress")
    paths = [(p["path"], p["pathType"]) for rule in ingress["spec"]["rules"]
             for p in rule["http"]["paths"]]

    def routed(url: str) -> bool:
        return any(url == path if kind == "Exact" else
                   url == path or url.startswith(path.rstrip("/") + "/")
                   for path, kind in paths)

    for inside in ("/docs", "/openapi.json", "/metrics", "/readyz", "/healthz"):
        assert not routed(inside), inside
    for outside in ("/", "/api/recommend", "/photos/food/a.jpg", "/static/app.js"):
        assert routed(outside), outside


def test_the_image_copies_every_package_the_install_includes() -> None:
    import tomllib

    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for where in found["where"]:
        for pattern in found["include"]:
            package = pattern.rstrip("*")
            if (DEPLOY.parent / where / package).is_dir():
                source = package if where == "." else where
                assert f"COPY {source} {source}" in dockerfile, package


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    """No .venv, models/ or .git in the context (gigabytes sent to the daemon)."""
    ignore = (DEPLOY.parent / ".dockerignore").read_text().split("\n")
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything out, then what the Dockerfile copies back in
    allowed = {rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set(re.findall(r"^COPY (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M))
    assert allowed == {"pyproject.toml", "README.md", "protos", "shared", "services",
                       "commands"}
    assert {"protos", "shared", "services", "commands", "pyproject.toml"} <= copied


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    """A code change then rebuilds one small layer, not torch's."""
    lines = (DEPLOY / "Dockerfile").read_text().split("\n")
    install = next(i for i, line in enumerate(lines) if "-r /tmp/requirements.txt" in line)
    first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY shared"))
    assert install < first_code


def test_every_stateless_service_spreads_over_nodes_and_keeps_one_pod_through_a_drain(
) -> None:
    budgets = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: d["spec"]
               for d in _documents() if d["kind"] == "PodDisruptionBudget"}
    stateless = [w for w in _workloads() if w["kind"] == "Deployment"
                 and w["metadata"]["name"] != "redis"]
    assert len(stateless) == 5
    for workload in stateless:
        name = workload["metadata"]["name"]
        assert budgets[name].get("minAvailable", 0) >= 1, name
        spread = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert any(c["topologyKey"] == "kubernetes.io/hostname"
                   and c["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
                   for c in spread), name


def _call_graph() -> set[tuple[str, str, int]]:
    """(caller, callee, port) from the code: a service calls X when its server.py reads
    HASHREC_X_TARGET, and Redis when it reads HASHREC_REDIS_URL."""
    services = {d["metadata"]["name"]: {p["name"]: p.get("targetPort") for p in
                                        d["spec"]["ports"]}
                for d in _documents() if d["kind"] == "Service"}
    containers = {w["metadata"]["name"]: {p["name"]: p["containerPort"] for p in
                                          w["spec"]["template"]["spec"]["containers"][0]
                                          ["ports"]} for w in _workloads()}
    edges = set()
    for caller in ("vision", "word", "graph", "user", "recommender", "gateway"):
        code = (DEPLOY.parent / "services" / caller / "server.py").read_text()
        for callee in services:
            if f"HASHREC_{callee.upper()}_TARGET" in code or (
                    callee == "redis" and "HASHREC_REDIS_URL" in code):
                port_name = "redis" if callee == "redis" else "grpc"
                assert services[callee][port_name] == port_name
                edges.add((caller, callee, containers[callee][port_name]))
    return edges


def test_network_policies_deny_by_default_and_open_exactly_the_call_graph() -> None:
    edges = _call_graph()
    assert ("gateway", "recommender", 50050) in edges and ("vision", "redis", 6379) in edges
    assert ("gateway", "redis", 6379) in edges  # the rate limits' shared store
    assert len(edges) == 8
    policies = {d["metadata"]["name"]: d["spec"] for d in _documents()
                if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {},
                                        "policyTypes": ["Ingress", "Egress"]}

    def peers(rules: list[dict], side: str) -> set[tuple[str, int]]:
        found = set()
        for rule in rules:
            for peer in rule.get(side, []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    name = peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    found |= {(name, port["port"]) for port in rule["ports"]}
        return found

    for pod in ("gateway", "recommender", "vision", "word", "graph", "user", "redis"):
        spec = policies[pod]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == pod
        assert peers(spec.get("ingress", []), "from") == {
            (caller, port) for caller, callee, port in edges if callee == pod}, pod
        assert peers(spec.get("egress", []), "to") == {
            (callee, port) for caller, callee, port in edges if caller == pod}, pod


def test_redis_requires_the_secrets_password_and_its_clients_have_it() -> None:
    """The password lives in the Secret hashrec-redis and reaches Redis and its clients as
    a mounted file (an env variable shows in the process's environment)."""
    redis = next(w for w in _workloads() if w["metadata"]["name"] == "redis")
    pod = redis["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret_volume = {"secretName": "hashrec-redis"}

    def mounted_at(spec: dict, app: dict) -> str | None:
        names = [v["name"] for v in spec.get("volumes", []) if v.get("secret") == secret_volume]
        paths = [m["mountPath"] for m in app.get("volumeMounts", []) if m["name"] in names]
        return paths[0] if paths else None

    assert mounted_at(pod, container) == "/secrets/redis"
    assert '--requirepass "$(cat /secrets/redis/password)"' in " ".join(container["args"])
    for probe in ("readinessProbe", "livenessProbe"):
        command = " ".join(container[probe]["exec"]["command"])
        assert "redis-cli ping" in command and "/secrets/redis/password" in command
    assert "PASSWORD" not in " ".join(_config())  # never in the ConfigMap
    assert "env" not in container or not any("valueFrom" in e for e in container["env"])
    clients = {caller for caller, callee, _ in _call_graph() if callee == "redis"}
    assert clients == {"vision", "recommender", "gateway"}
    for name, (spec, app) in _app_containers().items():
        given = {e["name"]: e.get("value") for e in app.get("env", [])}
        reads = given.get("HASHREC_REDIS_PASSWORD_FILE")
        if name in clients:
            assert reads == f"{mounted_at(spec, app)}/password", name
        else:
            assert reads is None and mounted_at(spec, app) is None, name


def test_every_pod_serves_the_pinned_version_and_verifies_it_before_starting() -> None:
    """No pod serves "the newest on the volume": the versions are in models.env, whose
    generated ConfigMap's name changes with them, so a new version rolls every pod and a
    rollback brings the old version back with the old pods."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generated["hashrec-model-versions"]["envs"] == ["models.env"]
    versions = dict(line.split("=", 1) for line in
                    (BASE / "models.env").read_text().split("\n")
                    if line and not line.startswith("#"))
    assert set(versions) == {"HASHREC_MODEL_VERSION", "HASHREC_USER_MODEL_VERSION"}
    assert not {"HASHREC_MODEL_DIR", "HASHREC_USER_MODEL_DIR"} & set(_config())
    pinned = {"word": ("HASHREC_MODEL_DIR", "/models/image/$(HASHREC_MODEL_VERSION)",
                       "image-to-hashtag"),
              "graph": ("HASHREC_MODEL_DIR", "/models/image/$(HASHREC_MODEL_VERSION)",
                        "image-to-hashtag"),
              "recommender": ("HASHREC_MODEL_DIR", "/models/image/$(HASHREC_MODEL_VERSION)",
                              "image-to-hashtag"),
              "user": ("HASHREC_USER_MODEL_DIR", "/models/user/$(HASHREC_USER_MODEL_VERSION)",
                       "user-tensor-effects")}
    apps = _app_containers()
    for name, (variable, directory, kind) in pinned.items():
        pod, container = apps[name]
        assert {"configMapRef": {"name": "hashrec-model-versions"}} in container["envFrom"]
        assert {"name": variable, "value": directory} in container["env"], name
        (verify,) = pod["initContainers"]
        assert verify["command"][:3] == ["hashrec", "verify", directory], name
        assert verify["command"][3:5] == ["--kind", kind], name
    from services.image_models import KIND as IMAGE_KIND
    from services.user.lookup import KIND as USER_KIND
    assert (IMAGE_KIND, USER_KIND) == ("image-to-hashtag", "user-tensor-effects")


def test_autoscalers_scale_on_calls_in_flight_with_cpu_as_the_fallback() -> None:
    from shared.grpc_server import IN_FLIGHT_METRIC

    for hpa in (d for d in _documents() if d["kind"] == "HorizontalPodAutoscaler"):
        kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert kinds["Pods"]["pods"]["metric"]["name"] == IN_FLIGHT_METRIC  # what we export
        assert kinds["Resource"]["resource"]["name"] == "cpu"



@pytest.mark.parametrize("kustomization", ["base", "training", *(f"overlays/{o}" for o in
                                                                  OVERLAYS)])
def test_checkov_finds_no_failed_check(kustomization: str, tmp_path: Path) -> None:
    """Policy lint of what each kustomization renders: zero failed checks; the two skips
    are justified beside them (deploy/base/kustomization.yaml)."""
    import json
    import os

    checkov = os.environ.get("HASHREC_CHECKOV") or str(
        DEPLOY.parent / ".venv-checkov" / "bin" / "checkov")
    if not Path(checkov).is_file():
        pytest.fail(f"checkov is missing at {checkov}: bash scripts/test.sh installs it")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(_render(DEPLOY / kustomization)))
    run = subprocess.run([checkov, "-f", str(rendered), "--framework", "kubernetes",
                          "--output", "json", "--compact"], capture_output=True,
                         text=True, timeout=300)
    report = json.loads(run.stdout)
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["passed"] > 50
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_43", "CKV_K8S_15"}, skipped


def _ray_job_and_pods() -> tuple[dict, dict[str, dict]]:
    """deploy/ray's RayJob and the pod spec of each of its groups (head, workers)."""
    job = next(d for d in _render(DEPLOY / "ray") if d["kind"] == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    return job, pods


def test_the_ray_job_runs_hashrec_train_on_the_ray_engine_of_its_cluster() -> None:
    import shlex

    from commands.cli import build_parser

    job, _ = _ray_job_and_pods()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "hashrec"
    args = build_parser().parse_args(argv[1:])  # the real CLI: a wrong flag exits here
    assert (args.command, args.engine, args.address) == ("train", "ray", "auto")


def test_every_ray_node_is_a_valid_restricted_pod_sharing_the_training_volumes() -> None:
    import kubernetes_validate

    _, pods = _ray_job_and_pods()
    assert set(pods) == {"head", "cpu", "gpu"}
    training = next(d for d in _documents(DEPLOY / "training") if d["kind"] == "Job")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in training["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    for name, spec in pods.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        assert not _restricted_problems(spec), name
        assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                if "persistentVolumeClaim" in v} == claims, name
        (container,) = spec["containers"]
        assert container["image"].startswith("hashrec:ray"), name
    assert "nvidia.com/gpu" in pods["gpu"]["containers"][0]["resources"]["limits"]


def test_ray_nodes_reach_each_other_and_nothing_else() -> None:
    (policy,) = [d for d in _documents(DEPLOY / "ray") if d["kind"] == "NetworkPolicy"]
    ray_nodes = {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    assert policy["spec"]["podSelector"] == ray_nodes
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": ray_nodes}]}]
    assert policy["spec"]["egress"] == [{"to": [{"podSelector": ray_nodes}]}]
