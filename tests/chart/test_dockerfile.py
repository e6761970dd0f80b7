"""The Dockerfile: lints clean, has both targets, layers that keep rebuilds
cheap, and an operator image that cannot contain torch or trainer code. (No Docker engine here: the images are not built by the tests.)"""
from __future__ import annotations

import ast
import fnmatch
import itertools
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from chartkit import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Never in the operator image: torch itself, and what exists only to run it.
HEAVY = {"torch", "deepspeed", "transformers", "accelerate", "peft", "bitsandbytes", "triton"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages, by name, with their instructions."""
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage = None
    for line in lines:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), flags=re.I)
            assert m, f"unparsed FROM {rest}"
            stage = Stage(name=m.group(2) or str(len(stages)), base=m.group(1))
            stages[stage.name] = stage
        elif stage is None:
            if keyword == "ARG" and "=" in rest:
                k, v = rest.strip().split("=", 1)
                global_args[k] = v.strip('"')
        else:
            stage.instructions.append((keyword, rest.strip()))
    return global_args, stages


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(DOCKERFILE.read_text())


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target and every stage it builds on or copies from."""
    seen, todo = [], [target]
    while todo:
        name = todo.pop()
        if name in {s.name for s in seen} or name not in stages:
            continue
        stage = stages[name]
        seen.append(stage)
        todo.append(stage.base)
        for _kw, rest in stage.instructions:
            todo += re.findall(r"--from=([\w.-]+)", rest)
    return seen


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_both_targets_exist_on_the_right_bases(dockerfile):
    args, stages = dockerfile
    assert {"operator", "trainer"} <= set(stages)
    operator_base = expand(stages["operator"].base, args)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", operator_base), operator_base
    trainer_base = expand(stages["trainer"].base, args)
    assert trainer_base.startswith("pytorch/pytorch:") and "cuda" in trainer_base, trainer_base
    # The trainer's DeepSpeed ops compile in the CUDA devel image.
    build = expand(stages["trainer-deps"].base, args)
    assert build.startswith("pytorch/pytorch:") and build.endswith("-devel")
    assert trainer_base.replace("-runtime", "") == build.replace("-devel", ""), "build and runtime must share torch/CUDA"


def _uid(stage: Stage) -> int:
    users = stage.args("USER")
    assert users, f"stage {stage.name} sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"stage {stage.name}: USER {user} is not numeric (runAsNonRoot cannot verify names)"
    return int(user)


def test_targets_run_as_numeric_non_root(dockerfile):
    _, stages = dockerfile
    from kubetune_operator.settings import OperatorSettings

    assert _uid(stages["operator"]) != 0
    # Trainer pods run as the operator's default uid; the image's user must match it.
    assert _uid(stages["trainer"]) == OperatorSettings().run_as_user != 0


def test_trainer_scratch_is_where_the_operator_points_it(dockerfile):
    from kubetune_operator import builders

    _, stages = dockerfile
    env = " ".join(stages["trainer"].args("ENV"))
    assert f"KUBETUNE_SCRATCH={builders.SCRATCH_DIR}" in env
    run = " ".join(stages["trainer"].args("RUN"))
    assert f"mkdir -p /home/kubetune {builders.SCRATCH_DIR}" in run and f"chown 1000:1000 /home/kubetune {builders.SCRATCH_DIR}" in run


def test_trainer_prebuilds_deepspeed_ops_of_the_pinned_version(dockerfile):
    _, stages = dockerfile
    build = stages["trainer-deps"]
    pin = [r for r in PYPROJECT["project"]["optional-dependencies"]["trainer"] if r.startswith("deepspeed")]
    assert pin == [f"deepspeed=={_arg(build, 'DEEPSPEED_VERSION')}"], "Dockerfile DEEPSPEED_VERSION != pyproject pin"
    run = " ".join(build.args("RUN"))
    assert "DS_BUILD_FUSED_ADAM=1" in run and "DS_BUILD_UTILS=1" in run
    assert "--no-build-isolation" in run and "TORCH_CUDA_ARCH_LIST" in run
    # CPU ops are built with -march=native by DeepSpeed: never prebuilt on the
    # build host, compiled on the node instead (the runtime image has g++).
    assert "DS_BUILD_CPU_ADAM=1" not in run and "DS_BUILD_OPS=1" not in run
    assert "g++" in " ".join(stages["trainer"].args("RUN"))


def _arg(stage: Stage, name: str) -> str:
    for rest in stage.args("ARG"):
        k, _, v = rest.partition("=")
        if k == name:
            return v.strip('"')
    raise AssertionError(f"no ARG {name} in {stage.name}")


def _pip_installs(stage: Stage) -> list[list[str]]:
    """Each `pip install` in the stage's RUN lines, as its argument list."""
    found = []
    for run in stage.args("RUN"):
        lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, "&&"]:
            if word in ("&&", ";", "||", "|"):
                for i in range(len(command) - 1):
                    if command[i].endswith("pip") and command[i + 1] == "install":
                        found.append(command[i + 2:])
                command = []
            else:
                command.append(word)
    return found


def _copies(stage: Stage) -> list[str]:
    """Sources of the stage's COPY instructions from the build context."""
    return [src for rest in stage.args("COPY") if "--from=" not in rest for src in shlex.split(rest)[:-1]]


def _mounts(run: str) -> list[str]:
    """Stages a RUN bind-mounts (--mount=type=bind,from=STAGE,...)."""
    return re.findall(r"--mount=type=bind,from=([\w.-]+)", run)


SOURCE_ROOTS = {"api/", "operator/", "trainer/"}


@pytest.mark.parametrize("target,extra,package", [("operator", "operator", "kubetune_operator"),
                                                  ("trainer", "trainer", "kubetune_trainer")])
def test_dependencies_install_in_their_own_layer_before_the_wheel(dockerfile, target, extra, package):
    """Layer order of each image: the dependencies (from a stage that sees only
    pyproject.toml and scripts/requirements.py) before the kubetune wheel,
    which is installed with --no-deps so it adds nothing else."""
    _, stages = dockerfile
    final = stages[target]
    runs = final.args("RUN")
    installs = [(i, args) for i, run in enumerate(runs) for args in _pip_installs(Stage("x", "", [("RUN", run)]))]
    assert len(installs) == 2, f"{target}: expected a dependency install and a wheel install, got {installs}"
    (dep_i, dep_args), (whl_i, whl_args) = installs
    assert dep_i < whl_i, f"{target}: the dependencies must be installed before the wheel"
    assert "-r" in dep_args and "--no-deps" not in dep_args
    assert "--no-deps" in whl_args and [a for a in whl_args if not a.startswith("-")] == ["/wheels/kubetune-*.whl"]
    (dep_stage,) = _mounts(runs[dep_i])
    (whl_stage,) = _mounts(runs[whl_i])
    assert set(_copies(stages[dep_stage])) == {"pyproject.toml", "scripts/requirements.py"}, (
        f"{dep_stage} must not see the source: a source change would reinstall every dependency")
    assert f"scripts/requirements.py {extra}" in " ".join(stages[dep_stage].args("RUN"))
    assert not SOURCE_ROOTS & set(_copies(final)), f"{target} copies source outside its wheel stage"
    assert set(_copies(stages[whl_stage])) == {"pyproject.toml", "README.md", "api/", f"{extra}/"}


def test_deepspeed_ops_compile_before_anything_of_ours_is_copied(dockerfile):
    _, stages = dockerfile
    deps = stages["trainer-deps"]
    keywords = [kw for kw, _ in deps.instructions]
    compile_at = next(i for i, (kw, rest) in enumerate(deps.instructions) if kw == "RUN" and "DS_BUILD_FUSED_ADAM=1" in rest)
    assert "COPY" not in keywords[:compile_at], "a COPY before the DeepSpeed build invalidates its cache on every change"


def test_operator_image_holds_no_torch_and_no_trainer_code(dockerfile):
    _, stages = dockerfile
    chain = stage_chain(stages, "operator")
    assert not any("trainer/" in _copies(stage) for stage in chain), "trainer source in an operator stage"
    text = " ".join(rest for stage in chain for _, rest in stage.instructions)
    assert "torch" not in text.replace("find_spec('torch')", "").replace("torch found", ""), \
        "the operator stages mention torch outside the no-torch guard"
    # The build itself refuses an image with torch or trainer code in it.
    runs = " ".join(stages["operator"].args("RUN"))
    assert "find_spec('torch')" in runs and "find_spec('kubetune_trainer')" in runs


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The kubetune wheel built as each image's wheel stage builds it: from a
    context with pyproject.toml, README.md, api/ and that image's source root."""
    import shutil

    out = {}
    for part in ("operator", "trainer"):
        ctx = tmp_path_factory.mktemp(f"ctx-{part}")
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, ctx / name)
        for root in ("api", part):
            shutil.copytree(ROOT / root, ctx / root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "--wheel-dir", str(ctx / "wheels"), str(ctx)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        (out[part],) = (ctx / "wheels").glob("kubetune-*.whl")
    return out


@pytest.mark.parametrize("part,packages", [("operator", {"kubetune_api", "kubetune_operator"}),
                                           ("trainer", {"kubetune_api", "kubetune_trainer"})])
def test_each_image_wheel_holds_only_its_packages(wheels, part, packages):
    import zipfile

    names = zipfile.ZipFile(wheels[part]).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == packages


def image_extras(dockerfile, part: str) -> list[str]:
    """The extras the Dockerfile's dependency stage of an image asks scripts/requirements.py for."""
    _, stages = dockerfile
    (run,) = [r for r in stages[f"{part}-deps"].args("RUN") if "scripts/requirements.py" in r]
    words = shlex.split(run)
    at = next(i for i, w in enumerate(words) if w.endswith("scripts/requirements.py"))
    return list(itertools.takewhile(lambda w: w not in (">", "&&", "|"), words[at + 1:]))


def image_requirements(dockerfile, part: str) -> list[str]:
    """What an image's dependency layer installs: scripts/requirements.py run exactly as the Dockerfile runs it."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "requirements.py"), *image_extras(dockerfile, part)],
                       capture_output=True, text=True, timeout=60, check=True)
    return [line for line in r.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("part", ["operator", "trainer"])
def test_image_dependency_sets_agree_with_pyproject(dockerfile, wheels, part):
    """What each image installs (scripts/requirements.py as the Dockerfile runs
    it: the operator image adds the `api` extra for `kubetune api`) is exactly
    the core dependencies plus those extras, as pyproject.toml and the wheel's
    own metadata (what `pip install kubetune[extras]` would resolve) declare them."""
    import zipfile
    from email.parser import Parser

    extras = image_extras(dockerfile, part)
    assert extras[0] == part, f"the {part} image installs {extras}"
    image = {str(Requirement(line)) for line in image_requirements(dockerfile, part)}
    assert image == {str(Requirement(x)) for x in _extra(*extras)}
    with zipfile.ZipFile(wheels[part]) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(z.read(meta).decode())
    from_wheel = set()
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            req.marker = None
            from_wheel.add(str(req))
    assert image == from_wheel
    # No image installs a development tool.
    dev_only = {canonicalize_name(Requirement(x).name) for x in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert not {canonicalize_name(Requirement(x).name) for x in image} & (dev_only - {"kubetune"})


def test_python_and_torch_floors_agree(dockerfile):
    """requires-python, the torch floor of the trainer extra, the Dockerfile's
    base images and docs/install.md say the same thing."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    args, _ = dockerfile
    requires_python = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert str(requires_python) == ">=3.11", "kopf 1.45 and transformers 5 need Python 3.11"
    (python_floor,) = [s.version for s in requires_python]
    image_python = re.match(r"python:(\d+\.\d+)", args["PYTHON_IMAGE"]).group(1)
    assert image_python == python_floor, "the operator image should run the floor Python that CI tests"
    (torch,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["trainer"] if r.startswith("torch")]
    (torch_floor,) = [s.version for s in torch.specifier if s.operator == ">="]
    assert Version(torch_floor) >= Version("2.6"), "transformers 5 needs torch 2.6"
    image_torch = re.match(r"pytorch/pytorch:(\d+\.\d+(\.\d+)?)-", args["TORCH_IMAGE"]).group(1)
    assert Version(image_torch) in torch.specifier, f"TORCH_IMAGE ships torch {image_torch}, outside {torch.specifier}"
    tool = PYPROJECT["tool"]
    assert tool["ruff"]["target-version"] == "py" + python_floor.replace(".", "")
    assert tool["mypy"]["python_version"] == python_floor
    dockerfile_text = DOCKERFILE.read_text()
    install = (ROOT / "docs" / "install.md").read_text()
    for text, where in ((dockerfile_text, "Dockerfile"), (install, "docs/install.md")):
        assert f"torch >= {torch_floor}" in text or f"torch {torch_floor} or newer" in text, where
        assert f"Python >= {python_floor}" in text or f"Python {python_floor}" in text, where


def dependency_closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """Distribution names needed by `requirements` (with the given extras),
    followed through the installed packages' metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    names: set[str] = set()
    while todo:
        req, active = todo.pop()
        envs = [{"extra": e} for e in active] or [{"extra": ""}]
        if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{req.name} is needed but not installed: cannot follow its dependencies") from None
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or []]
    return names


def _extra(*names: str) -> list[str]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    return PYPROJECT["project"]["dependencies"] + [r for name in names for r in extras[name]]


def test_operator_extra_pulls_no_torch(dockerfile):
    """The operator image's whole dependency set (operator and api extras, as the Dockerfile installs them)."""
    closure = dependency_closure(image_requirements(dockerfile, "operator"))
    assert {"kopf", "kubernetes", "prometheus-client", "pydantic"} <= closure
    assert not closure & HEAVY, f"the operator extra pulls {sorted(closure & HEAVY)}"
    assert not {n for n in closure if n.startswith("nvidia-")}


def test_the_closure_check_would_see_torch():
    """Guard against a vacuous check: the same walk finds torch for the trainer."""
    assert {"torch", "deepspeed", "transformers"} <= dependency_closure(_extra("trainer"))


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies(dockerfile):
    _, stages = dockerfile
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        # Docker's rules: patterns are cleaned (no trailing slash), the last
        # matching pattern wins, and a pattern matching a parent folder
        # matches everything in it.
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for p in patterns:
            negate = p.startswith("!")
            pat = (p[1:] if negate else p).rstrip("/")
            if any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes):
                result = not negate
        return result

    sources = {src for stage in stages.values() for src in _copies(stage)}
    assert sources == {"pyproject.toml", "README.md", "scripts/requirements.py", "api/", "operator/", "trainer/"}
    for src in sources:
        assert not ignored(src.rstrip("/")), f"{src} is copied but .dockerignore excludes it"
    for private in (".venv", ".git", ".tools", "tests", "runs", "scripts/setup.sh", "operator/kubetune_operator/__pycache__"):
        assert ignored(private), f"{private} would be sent to the Docker daemon"


def test_operator_image_exposes_the_operator_default_ports(dockerfile):
    from kubetune_operator.settings import OperatorSettings

    _, stages = dockerfile
    exposed = {int(p) for rest in stages["operator"].args("EXPOSE") for p in rest.split()}
    defaults = OperatorSettings()
    assert exposed == {defaults.health_port, defaults.metrics_port}
    assert stages["operator"].args("ENTRYPOINT") == ['["kubetune", "operator"]']


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_images_carry_oci_labels(dockerfile, target):
    _, stages = dockerfile
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', " ".join(stages[target].args("LABEL"))))
    assert {"title", "description", "version", "source", "licenses"} <= {k.rsplit(".", 1)[1] for k in labels}
    assert labels["org.opencontainers.image.title"] == f"kubetune-{target}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    args, _ = dockerfile
    assert args["VERSION"] == PYPROJECT["project"]["version"], "the VERSION build arg follows the project version"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]


# ------------------------------------------------- imports vs the image's dependencies
# Source roots of the packages each image's wheel holds.
IMAGE_SOURCES = {"operator": ("api/kubetune_api", "operator/kubetune_operator"),
                 "trainer": ("api/kubetune_api", "trainer/kubetune_trainer")}
# Third-party imports an image's code makes that its dependencies do not provide,
# unguarded, each reached only by a command that needs another install anyway.
NOT_IN_THE_IMAGE = {
    ("operator", "matplotlib", "api/kubetune_api/sweep_results.py"):
        "the plots of a FineTuneSweep: drawn by its results Job in the trainer image, or by `kubetune run` "
        "(a local run, which needs the trainer extra); the operator process never draws",
}
_IMPORT_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a try whose handlers catch a failed import."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                caught = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                if h.type is None or any(isinstance(c, ast.Name) and c.id in _IMPORT_GUARDS for c in caught):
                    return True
    return False


def third_party_imports(part: str) -> dict[tuple[str, str], bool]:
    """{(top-level module, file): guarded} for every absolute import in the image's packages (any depth)."""
    own = {Path(src).name for srcs in IMAGE_SOURCES.values() for src in srcs}
    out: dict[tuple[str, str], bool] = {}
    for src in IMAGE_SOURCES[part]:
        for path in sorted((ROOT / src).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top == "__future__" or (top in own and src.endswith(top)):
                        continue
                    if top in own and any(s.endswith(top) for s in IMAGE_SOURCES[part]):
                        continue
                    key = (top, str(path.relative_to(ROOT)))
                    out[key] = out.get(key, True) and _guarded(node, parents)
    return out


@pytest.mark.parametrize("part", ["operator", "trainer"])
def test_every_import_of_an_image_is_installed_in_it(dockerfile, part):
    """Each third-party module the image's code imports comes from a distribution in
    the closure of what the image installs, or the import is guarded (try/except
    ImportError with a message), or it is listed in NOT_IN_THE_IMAGE with the reason.
    (The operator image runs `kubetune api`, whose S3 file store imports boto3.)"""
    closure = dependency_closure(image_requirements(dockerfile, part))
    providers = metadata.packages_distributions()
    missing = []
    for (module, where), guarded in sorted(third_party_imports(part).items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if dists & closure or guarded or (part, module, where) in NOT_IN_THE_IMAGE:
            continue
        missing.append(f"{where}: import {module} ({', '.join(sorted(dists)) or 'not installed here'})")
    assert not missing, f"the {part} image lacks what its code imports:\n" + "\n".join(missing)
    stale = {k for k in NOT_IN_THE_IMAGE if k[0] == part} - {(part, m, w) for (m, w) in third_party_imports(part)}
    assert not stale, f"NOT_IN_THE_IMAGE lists imports that no longer exist: {sorted(stale)}"


def test_the_import_check_sees_unguarded_and_guarded_imports():
    """Guard against a vacuous check: the scan finds the operator's kopf and the trainer's
    torch, tells guarded imports from plain ones, and the trainer image lacks kopf."""
    operator, trainer = third_party_imports("operator"), third_party_imports("trainer")
    assert ("kopf", "operator/kubetune_operator/kube.py") in operator
    assert any(m == "torch" for m, _ in trainer) and not any(m == "torch" for m, _ in operator)
    assert operator[("kubetune_trainer", "operator/kubetune_operator/cli.py")] is True  # try/except ImportError
    assert operator[("kopf", "operator/kubetune_operator/kube.py")] is False
    assert "kopf" in dependency_closure(_extra("operator")) and "kopf" not in dependency_closure(_extra("trainer"))
