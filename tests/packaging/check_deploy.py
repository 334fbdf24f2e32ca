"""Checks gridfn's packaging offline, for tests/e2e/packaging.rs.

    check_deploy.py manifests DIR [--config-out FILE --env-out FILE]
        Every document of every *.yaml in DIR (but kustomization.yaml) is
        validated against Kubernetes' own JSON schemas (kubernetes-validate,
        strict: an unknown field is an error, as `kubectl apply` would
        refuse it); kustomization.yaml must list exactly those files. With
        --config-out, the gridfn ConfigMap's gridfn.toml is written there;
        with --env-out, the gridfn container's environment as JSON, each
        secretKeyRef resolved from the Secret's stringData (so a name that
        does not line up fails here, not in the cluster).

    check_deploy.py dockerfile FILE [--context DIR]
        Parses the Dockerfile as Docker does (dockerfile-parse) and checks
        what the README promises of the image.

Exit status 0 when everything holds; 1 with one line per problem on stderr.
"""

import argparse
import json
import os
import sys

import kubernetes_validate
import yaml

# The Kubernetes version whose schemas are used: the newest the wheel ships.
K8S_VERSION = kubernetes_validate.utils.latest_version()


def load_documents(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def check_manifests(folder, config_out, env_out):
    problems = []
    files = sorted(n for n in os.listdir(folder) if n.endswith((".yaml", ".yml")))
    resources = {}
    for name in files:
        if name == "kustomization.yaml":
            continue
        for doc in load_documents(os.path.join(folder, name)):
            where = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problems.append(f"{where}: {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(f"{where}: no schema: {error}")
            resources[(doc.get("kind"), doc.get("metadata", {}).get("name"))] = doc

    kustomization = load_documents(os.path.join(folder, "kustomization.yaml"))[0]
    listed = set(kustomization.get("resources", []))
    on_disk = set(files) - {"kustomization.yaml"}
    for name in sorted(listed - on_disk):
        problems.append(f"kustomization.yaml: lists {name}, which does not exist")
    for name in sorted(on_disk - listed):
        problems.append(f"kustomization.yaml: does not list {name}")

    if config_out or env_out:
        problems += extract(resources, config_out, env_out)
    return problems


def extract(resources, config_out, env_out):
    """The gridfn.toml and environment the gridfn container would get."""
    deployment = resources.get(("Deployment", "gridfn"))
    if deployment is None:
        return ["no Deployment named gridfn"]
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "gridfn")
    problems = []

    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    config_maps = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    config = None
    for volume, config_map in config_maps.items():
        if mounts.get(volume) == "/etc/gridfn":
            config = resources.get(("ConfigMap", config_map), {}).get("data", {}).get("gridfn.toml")
    if config is None:
        problems.append("no ConfigMap with gridfn.toml is mounted at /etc/gridfn")
    elif config_out:
        with open(config_out, "w") as f:
            f.write(config)

    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        secret = resources.get(("Secret", ref["name"]))
        value = (secret or {}).get("stringData", {}).get(ref["key"])
        if value is None:
            problems.append(f"env {var['name']}: Secret {ref['name']} has no stringData key {ref['key']}")
        else:
            env[var["name"]] = value
    if env_out:
        with open(env_out, "w") as f:
            json.dump(env, f)
    return problems


def check_dockerfile(path, context):
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=path)
    instructions = parser.structure
    problems = []
    # Each stage's base with the ARG defaults declared before the first FROM
    # substituted, as a build without --build-arg gets them.
    froms = parser.parent_images
    if len(froms) < 2:
        problems.append(f"expected a multi-stage build, found FROM {froms}")
    else:
        if not froms[0].startswith("rust:1.95"):
            problems.append(f"the builder is not the Rust 1.95 image: FROM {froms[0]}")
        if froms[-1] in ("", "scratch") or froms[-1].startswith("rust:") or "$" in froms[-1]:
            problems.append(f"the runtime stage is not a small base image: FROM {froms[-1]}")
    # The last stage: what runs.
    last = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    final = instructions[last:]
    kinds = {i["instruction"] for i in final}
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the image runs as root (USER {users})")
    if "EXPOSE" not in kinds:
        problems.append("no EXPOSE in the runtime stage")
    if "HEALTHCHECK" in {i["instruction"] for i in instructions}:
        problems.append("HEALTHCHECK present: Kubernetes' probes check health")
    entry = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    try:
        argv = json.loads(entry[-1]) if entry else []
    except json.JSONDecodeError:
        argv = None
    if not argv or os.path.basename(argv[0]) != "gridfn" or argv[1:] != ["serve", "--config", "/etc/gridfn/gridfn.toml"]:
        problems.append(f"ENTRYPOINT is not exec-form gridfn serve --config /etc/gridfn/gridfn.toml: {entry}")
    # Every COPY from the build context names something that exists and is
    # not excluded by .dockerignore's top-level entries.
    ignored = set()
    ignore_file = os.path.join(context, ".dockerignore")
    if os.path.exists(ignore_file):
        with open(ignore_file) as f:
            ignored = {line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")}
    for ins in instructions:
        if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
            continue
        sources = [s for s in ins["value"].split()[:-1] if not s.startswith("--")]
        for source in sources:
            if source != "." and not os.path.exists(os.path.join(context, source)):
                problems.append(f"COPY {source}: not in the build context")
            if source.rstrip("/") in ignored:
                problems.append(f"COPY {source}: excluded by .dockerignore")
    return problems


def main():
    args = argparse.ArgumentParser()
    sub = args.add_subparsers(dest="command", required=True)
    manifests = sub.add_parser("manifests")
    manifests.add_argument("folder")
    manifests.add_argument("--config-out")
    manifests.add_argument("--env-out")
    dockerfile = sub.add_parser("dockerfile")
    dockerfile.add_argument("file")
    dockerfile.add_argument("--context", help="the build context (default: the Dockerfile's folder)")
    options = args.parse_args()
    if options.command == "manifests":
        problems = check_manifests(options.folder, options.config_out, options.env_out)
    else:
        problems = check_dockerfile(options.file, options.context or os.path.dirname(os.path.abspath(options.file)))
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
