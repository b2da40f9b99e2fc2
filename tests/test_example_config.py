"""The Kubernetes example (example/kubernetes, example/DEPLOYMENT.md) is usable as written.

Its YAML parses; its ``hub.extraConfig`` Python runs against a traitlets
Config and sets only traits that exist on JupyterHub's and KubeSpawner's
classes; the service's command line is accepted by the service itself; the
Helm values use only keys the charts define (the key lists below are taken
from the Z2JH 4.x values schema and the binderhub-service chart's values);
and the two charts' values agree with each other.
"""

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from jupyterhub.app import JupyterHub
from jupyterhub.auth import Authenticator
from jupyterhub.scopes import scope_definitions
from jupyterhub.services.service import Service
from jupyterhub.spawner import Spawner
from kubespawner import KubeSpawner
from traitlets.config import Config, LazyConfigValue
from traitlets.utils.importstring import import_item

from tljh_repo2docker import TLJH_R2D_ADMIN_SCOPE, hub_config
from tljh_repo2docker.app import TljhRepo2Docker
from tljh_repo2docker.builds.binderhub import PROVIDERS, BinderHubBuilder

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example"
K8S = EXAMPLE / "kubernetes"

#: Classes that a hub.extraConfig snippet may configure.
HUB_CLASSES = {
    "JupyterHub": JupyterHub,
    "Spawner": Spawner,
    "KubeSpawner": KubeSpawner,
    "Repo2DockerKubeSpawner": import_item("tljh_repo2docker.Repo2DockerKubeSpawner"),
    "Authenticator": Authenticator,
}

# Keys of the jupyterhub chart (Z2JH 4.x) values, by section, for the sections
# the example sets (from the chart's values.schema.yaml).
_NETWORK_POLICY = {
    "enabled",
    "ingress",
    "egress",
    "egressAllowRules",
    "interNamespaceAccessLabels",
    "allowedIngressPorts",
}
_IMAGE = {"name", "tag", "pullPolicy", "pullSecrets"}
Z2JH_KEYS = {
    "": {
        "enabled",
        "fullnameOverride",
        "nameOverride",
        "imagePullSecret",
        "imagePullSecrets",
        "hub",
        "proxy",
        "singleuser",
        "scheduling",
        "ingress",
        "prePuller",
        "custom",
        "cull",
        "debug",
        "rbac",
        "global",
    },
    "hub": {
        "revisionHistoryLimit",
        "config",
        "extraFiles",
        "baseUrl",
        "command",
        "args",
        "cookieSecret",
        "image",
        "networkPolicy",
        "db",
        "labels",
        "initContainers",
        "extraEnv",
        "extraConfig",
        "fsGid",
        "service",
        "pdb",
        "existingSecret",
        "nodeSelector",
        "tolerations",
        "activeServerLimit",
        "allowNamedServers",
        "annotations",
        "authenticatePrometheus",
        "concurrentSpawnLimit",
        "consecutiveFailureLimit",
        "podSecurityContext",
        "containerSecurityContext",
        "deploymentStrategy",
        "extraContainers",
        "extraVolumeMounts",
        "extraVolumes",
        "livenessProbe",
        "readinessProbe",
        "namedServerLimitPerUser",
        "redirectToServer",
        "resources",
        "lifecycle",
        "services",
        "loadRoles",
        "shutdownOnLogout",
        "templatePaths",
        "templateVars",
        "serviceAccount",
        "extraPodSpec",
    },
    "hub.image": _IMAGE,
    "hub.networkPolicy": _NETWORK_POLICY,
    "hub.service": {"type", "ports", "annotations", "extraPorts", "loadBalancerIP"},
    "proxy": {
        "chp",
        "secretToken",
        "service",
        "https",
        "traefik",
        "labels",
        "annotations",
        "deploymentStrategy",
        "secretSync",
    },
    "proxy.chp": {
        "revisionHistoryLimit",
        "networkPolicy",
        "extraCommandLineFlags",
        "extraEnv",
        "pdb",
        "nodeSelector",
        "tolerations",
        "containerSecurityContext",
        "image",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "defaultTarget",
        "errorTarget",
        "extraPodSpec",
    },
    "proxy.chp.networkPolicy": _NETWORK_POLICY,
    "imagePullSecret": {
        "create",
        "automaticReferenceInjection",
        "registry",
        "username",
        "password",
        "email",
    },
    "singleuser": {
        "networkPolicy",
        "podNameTemplate",
        "cpu",
        "memory",
        "image",
        "initContainers",
        "profileList",
        "extraFiles",
        "extraEnv",
        "nodeSelector",
        "extraTolerations",
        "extraNodeAffinity",
        "extraPodAffinity",
        "extraPodAntiAffinity",
        "cloudMetadata",
        "cmd",
        "defaultUrl",
        "events",
        "extraAnnotations",
        "extraContainers",
        "extraLabels",
        "extraPodConfig",
        "extraResource",
        "fsGid",
        "lifecycleHooks",
        "networkTools",
        "serviceAccountName",
        "startTimeout",
        "storage",
        "allowPrivilegeEscalation",
        "uid",
    },
}

# Keys of the binderhub-service chart's values, and the traits of BinderHub's
# classes that the example configures (BinderHub is not installed here).
BINDERHUB_SERVICE_KEYS = {
    "": {
        "nameOverride",
        "fullnameOverride",
        "global",
        "custom",
        "networkPolicy",
        "buildPodsDockerConfig",
        "buildPodsRegistryCredentials",
        "config",
        "extraConfig",
        "extraCredentials",
        "extraEnv",
        "replicas",
        "image",
        "resources",
        "securityContext",
        "podSecurityContext",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "affinity",
        "tolerations",
        "rbac",
        "serviceAccount",
        "service",
        "ingress",
        "dockerApi",
    },
    "service": {"type", "port"},
    "buildPodsRegistryCredentials": {"server", "username", "password"},
    "config": {"BinderHub", "DockerRegistry"},
    "config.BinderHub": {
        "base_url",
        "port",
        "enable_api_only_mode",
        "use_registry",
        "image_prefix",
        "auth_enabled",
        "hub_url",
    },
    "config.DockerRegistry": {
        "url",
        "auth_config_url",
        "docker_config_path",
        "token_url",
        "username",
        "password",
    },
}

#: Options of ``python -m tljh_repo2docker`` that the brief's deployment names.
SERVICE_OPTIONS = {
    "ip",
    "port",
    "default_memory_limit",
    "default_cpu_limit",
    "machine_profiles",
    "node_selector",
    "binderhub_url",
    "db_url",
    "repo_providers",
    "cookie_secret_file",
}


def load(name):
    with open(K8S / name) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def z2jh():
    return load("jupyterhub-values.yaml")


@pytest.fixture(scope="module")
def binderhub():
    return load("binderhub-values.yaml")


def run_snippet(name, code):
    """Execute one hub.extraConfig snippet like the hub does; return its Config."""
    c = Config()
    compiled = compile(code, f"hub.extraConfig.{name}", "exec")
    exec(compiled, {"c": c, "get_config": lambda: c, "__name__": "__config__"})
    return c


def value(section, key, empty):
    """A config value, with ``.append``/``.extend`` on unset keys applied to ``empty``."""
    got = section[key] if key in section else empty
    return got.get_value(empty) if isinstance(got, LazyConfigValue) else got


@pytest.fixture(scope="module")
def hub_config_result(z2jh):
    snippets = z2jh["hub"]["extraConfig"]
    assert snippets, "hub.extraConfig is empty"
    merged = Config()
    for name, code in sorted(snippets.items()):
        merged.merge(run_snippet(name, code))
    return merged


def check_keys(values, allowed, where):
    for path, keys in allowed.items():
        section = values
        for part in [p for p in path.split(".") if p]:
            section = section.get(part) if isinstance(section, dict) else None
        if section is None:
            continue
        unknown = set(section) - keys
        assert not unknown, f"{where}: unknown keys under {path or 'the top level'}: {unknown}"


# -- YAML ------------------------------------------------------------------------


def test_files_exist():
    for name in ("jupyterhub-values.yaml", "binderhub-values.yaml", "Dockerfile.hub"):
        assert (K8S / name).is_file(), name
    assert (EXAMPLE / "DEPLOYMENT.md").is_file()


def test_z2jh_values_use_only_chart_keys(z2jh):
    check_keys(z2jh, Z2JH_KEYS, "jupyterhub-values.yaml")
    for name, service in z2jh["hub"].get("services", {}).items():
        unknown = set(service) - set(Service.class_trait_names()) - {"apiToken"}
        assert not unknown, f"hub.services.{name}: unknown keys {unknown}"


def test_binderhub_values_use_only_chart_keys(binderhub):
    check_keys(binderhub, BINDERHUB_SERVICE_KEYS, "binderhub-values.yaml")
    for env in binderhub["extraEnv"]:
        assert set(env) in ({"name", "value"}, {"name", "valueFrom"}), env


def test_binderhub_is_api_only_with_registry(binderhub):
    config = binderhub["config"]["BinderHub"]
    assert config["enable_api_only_mode"] is True
    assert config["use_registry"] is True
    assert config["auth_enabled"] is True
    assert "/" in config["image_prefix"], "image_prefix must include the registry host"


# -- the two charts agree -----------------------------------------------------------


def test_charts_agree(z2jh, binderhub, hub_config_result):
    binder_service = z2jh["hub"]["services"]["binder"]
    binder_host = urlsplit(binder_service["url"]).hostname
    assert binder_host == binderhub["fullnameOverride"]
    assert urlsplit(binder_service["url"]).port in (None, binderhub["service"]["port"])

    # BinderHub reads the token the jupyterhub chart generated for hub.services.binder
    env = {e["name"]: e for e in binderhub["extraEnv"]}
    secret = env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "hub", "key": "hub.services.binder.apiToken"}
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == binderhub["config"]["BinderHub"]["base_url"]

    # the service's --binderhub_url is BinderHub's Service and base_url
    [service] = [s for s in services(hub_config_result) if s["name"] == hub_config.SERVICE_NAME]
    options = command_options(service["command"])
    url = urlsplit(options["binderhub_url"])
    assert url.hostname == binderhub["fullnameOverride"]
    assert url.path == binderhub["config"]["BinderHub"]["base_url"]

    # the service's port is exposed on the hub Service and allowed by the network policies
    port = int(options["port"])
    assert urlsplit(service["url"]).port == port
    assert port in [p["port"] for p in z2jh["hub"]["service"]["extraPorts"]]
    ingress_ports = [
        p["port"] for rule in z2jh["hub"]["networkPolicy"]["ingress"] for p in rule["ports"]
    ]
    assert port in ingress_ports
    egress_ports = [
        p["port"] for rule in z2jh["proxy"]["chp"]["networkPolicy"]["egress"] for p in rule["ports"]
    ]
    assert port in egress_ports

    # the pull secret is for the registry BinderHub pushes to
    registry = z2jh["imagePullSecret"]["registry"]
    assert binderhub["config"]["BinderHub"]["image_prefix"].startswith(registry + "/")
    assert urlsplit(binderhub["buildPodsRegistryCredentials"]["server"]).hostname == registry


# -- hub.extraConfig ----------------------------------------------------------------


def services(c):
    return value(c.JupyterHub, "services", [])


def command_options(command):
    options = {}
    for arg in command[3:]:
        match = re.fullmatch(r"--([A-Za-z_][\w.]*)=(.*)", arg, re.S)
        assert match, f"service option {arg!r} is not --name=value"
        options.setdefault(match.group(1), match.group(2))
    return options


def test_extra_config_sets_only_existing_traits(hub_config_result):
    for section, traits in hub_config_result.items():
        assert section in HUB_CLASSES, f"hub.extraConfig configures an unknown class {section}"
        known = set(HUB_CLASSES[section].class_trait_names(config=True))
        unknown = set(traits) - known
        assert not unknown, f"{section} has no configurable traits {unknown}"


def test_spawner_is_the_kube_spawner(hub_config_result):
    name = hub_config_result.JupyterHub.spawner_class
    assert name == "tljh_repo2docker.Repo2DockerKubeSpawner"
    assert issubclass(import_item(name), KubeSpawner)


def test_service_entry(hub_config_result):
    entries = services(hub_config_result)
    for entry in entries:
        unknown = set(entry) - set(Service.class_trait_names())
        assert not unknown, f"service {entry.get('name')}: unknown keys {unknown}"
    [service] = [s for s in entries if s["name"] == hub_config.SERVICE_NAME]
    assert service["command"][:3] == [sys.executable, "-m", "tljh_repo2docker"]
    assert TLJH_R2D_ADMIN_SCOPE in service["oauth_client_allowed_scopes"]
    assert service["oauth_no_confirm"] is True

    options = command_options(service["command"])
    assert set(options) <= SERVICE_OPTIONS
    assert {"ip", "port", "binderhub_url", "db_url"} <= set(options)
    assert options["ip"] == "0.0.0.0"
    # the database lives on the hub's volume, where the service runs
    assert options["db_url"].startswith(f"sqlite:///{service['cwd']}/")
    for provider in re.findall(r"--repo_providers=(\S+)", " ".join(service["command"])):
        assert provider in PROVIDERS


def test_spawner_reads_the_services_database(hub_config_result):
    [service] = [s for s in services(hub_config_result) if s["name"] == hub_config.SERVICE_NAME]
    db_url = command_options(service["command"])["db_url"]
    assert hub_config_result.Repo2DockerKubeSpawner.db_url == db_url


def test_service_accepts_its_command_line(hub_config_result):
    [service] = [s for s in services(hub_config_result) if s["name"] == hub_config.SERVICE_NAME]
    argv = service["command"][3:]
    parser = TljhRepo2Docker()
    parser.parse_command_line(argv)
    for option in command_options(service["command"]):
        assert option in TljhRepo2Docker.aliases, f"--{option} is not an option of the service"
    # building the application runs its validators on every value
    app = TljhRepo2Docker(config=parser.config)
    assert app.binderhub_url == "http://binder/services/binder/"
    assert len(app.machine_profiles) == 2
    assert app.node_selector["gpu"]["values"] == ["yes", "no"]
    assert app.default_memory_limit == "2G"
    assert app.default_cpu_limit == 1.0
    assert app.provider_choices == ["gh", "gl", "git"]
    # and the builder it makes points at BinderHub
    assert BinderHubBuilder(url=app.binderhub_url).url == app.binderhub_url


def test_roles_and_scopes(hub_config_result, z2jh):
    c = hub_config_result
    custom = value(c.JupyterHub, "custom_scopes", {})
    assert TLJH_R2D_ADMIN_SCOPE in custom
    assert all(name.startswith("custom:") for name in custom)

    roles = {role["name"]: role for role in value(c.JupyterHub, "load_roles", [])}
    service_names = {s["name"] for s in services(c)} | set(z2jh["hub"]["services"])
    for role in roles.values():
        for scope in role["scopes"]:
            base, _, selector = scope.partition("!")
            assert base in scope_definitions or base in custom, f"unknown scope {scope}"
            if selector.startswith("service="):
                assert selector[len("service=") :] in service_names, scope
        assert set(role.get("services", [])) <= service_names

    # everything the package's own hub configuration asks for is granted here
    for wanted in hub_config.roles(binderhub=True):
        have = roles[wanted["name"]]
        assert set(wanted["scopes"]) <= set(have["scopes"]), wanted["name"]
        assert set(wanted.get("services", [])) <= set(have.get("services", []))
    assert roles[hub_config.SERVICE_ROLE]["scopes"] == [
        "list:users",
        "read:users",
        "read:roles:users",
        "admin:servers",
        "list:groups",
        "read:groups",
        "read:users:groups",
        "access:services!service=binder",
    ]  # the example's own order
    assert TLJH_R2D_ADMIN_SCOPE in roles["tljh-repo2docker-admin"]["scopes"]


def test_machine_profiles_and_node_selector_are_valid(hub_config_result):
    from tljh_repo2docker.limits import parse_machine_profile, parse_node_selector_config

    [service] = [s for s in services(hub_config_result) if s["name"] == hub_config.SERVICE_NAME]
    options = command_options(service["command"])
    profiles = json.loads(options["machine_profiles"])
    assert [parse_machine_profile(p)["label"] for p in profiles]
    assert parse_node_selector_config(options["node_selector"]) == {
        "gpu": {"description": "GPU availability", "values": ["yes", "no"]}
    }


# -- Dockerfile and DEPLOYMENT.md -----------------------------------------------------


def test_dockerfile_builds_on_the_chart_hub_image():
    text = (K8S / "Dockerfile.hub").read_text()
    version = re.search(r"^ARG Z2JH_VERSION=(\S+)$", text, re.M).group(1)
    assert re.search(r"^FROM quay\.io/jupyterhub/k8s-hub:\$\{Z2JH_VERSION\}$", text, re.M)
    assert f"--version {version}" in (EXAMPLE / "DEPLOYMENT.md").read_text()
    # everything it copies exists at the root of the repository
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile.hub copies a missing {source}"
    assert '".[kubernetes]"' in text


def test_deployment_doc_names_real_settings():
    text = (EXAMPLE / "DEPLOYMENT.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        compile(block, "DEPLOYMENT.md", "exec")
    for link in re.findall(r"\]\((kubernetes/[^)]*)\)", text):
        assert (EXAMPLE / link).exists(), link
    for option in set(re.findall(r"`--([a-z_]+)", text)):
        assert option in TljhRepo2Docker.aliases, f"DEPLOYMENT.md names --{option}"
    traits = set(BinderHubBuilder.class_trait_names(config=True))
    named = set(re.findall(r"BinderHubBuilder\.([a-z_]+)", text))
    named |= {"read_timeout", "connect_timeout", "retries", "retry_delay", "token"} & set(
        re.findall(r"`([a-z_]+)`", text)
    )
    assert named and named <= traits, named - traits
    [row] = [
        line for line in text.splitlines() if line.startswith("| service | `--repo_providers`")
    ]
    assert set(re.findall(r"`([a-z]+)`", row)) == set(PROVIDERS)
