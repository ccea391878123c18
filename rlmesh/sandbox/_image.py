"""Sandbox images: built offline from a host wheelhouse, tagged by a content hash.

The image's Python is asked once per base image (cached by image ID). The
host prepares a wheelhouse with ``pip download`` for that Python version and
platform (the only network use, on the host), and the build installs from it
with ``--no-index`` under ``network_mode="none"``: a build that works once
works offline. The tag is a hash of the Dockerfile, the base image's ID, every
wheel's name and sha256 and rlmesh's version, so an image is reused until one
of them changes. Runtime parameters (make kwargs, imports, num_envs) are
passed when the container starts and never cause a rebuild.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SandboxError

__all__ = ["BuildPlan", "ImagePython", "build_base_image", "ensure_image", "existing_image", "image_python"]

log = logging.getLogger("rlmesh.sandbox")

#: The base image built by ``rlmesh sandbox base-image``.
LOCAL_BASE = "rlmesh-base:bookworm"
#: The base image when neither the argument, ``RLMESH_SANDBOX_BASE_IMAGE`` nor the local base is there.
PUBLIC_BASE = "python:3.11-slim"
#: Where the image's virtual environment lives.
VENV = "/usr/local/rlmesh/venv"
#: Where an hf:// source's checkout lives in the image.
SOURCE_DIR = "/usr/local/rlmesh/source"
#: A pip download or wheel build may take this long.
PIP_TIMEOUT = 900.0
#: An image build may take this long.
BUILD_TIMEOUT = 1800.0
#: The oldest glibc whose manylinux wheels are offered to an image.
_MANYLINUX_FLOOR = 17


def cache_dir() -> Path:
    """Where sandboxes keep wheels, wheelhouses, hub checkouts and image facts (under ``$XDG_CACHE_HOME``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rlmesh" / "sandbox"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ImagePython:
    """The base image's Python: version, glibc and machine (what its wheels must fit)."""

    version: str  # "3.11"
    glibc: str  # "2.36", "" on a non-glibc image
    machine: str  # "x86_64"

    @property
    def platforms(self) -> list[str]:
        """The ``pip download --platform`` tags the image accepts, newest first, then ``any``."""
        out: list[str] = []
        if self.glibc:
            major, minor = (int(p) for p in self.glibc.split(".")[:2])
            if major == 2:
                out += [f"manylinux_2_{m}_{self.machine}" for m in range(minor, _MANYLINUX_FLOOR - 1, -1)]
                out.append(f"manylinux2014_{self.machine}")
        return [*out, "any"]

    @property
    def abi(self) -> str:
        """The CPython ABI tag, as ``cp311``."""
        return "cp" + self.version.replace(".", "")


_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
    "'glibc': platform.libc_ver()[1] if platform.libc_ver()[0] == 'glibc' else '', "
    "'machine': platform.machine()}))"
)


def image_python(api: Any, image_id: str) -> ImagePython:
    """Ask the image (run once, no network, then cached by image ID) which Python it has.

    Raises:
        SandboxError: the image has no ``python3`` or it answered garbage.
    """
    path = _python_facts(image_id)
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        try:
            out = api.containers.run(
                image_id,
                ["python3", "-c", _PROBE],
                entrypoint=[],
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                user="65534:65534",
                remove=True,
                stdout=True,
                stderr=True,
            )
            facts = json.loads(out.decode().strip().splitlines()[-1])
        except Exception as exc:
            raise SandboxError(
                f"could not ask the base image {image_id[:19]} for its python3: {exc}"
            ) from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(facts))
    return ImagePython(str(facts["version"]), str(facts["glibc"]), str(facts["machine"]))


def _python_facts(image_id: str) -> Path:
    return cache_dir() / "images" / f"{image_id.replace(':', '_')}.json"


def _cached_image_python(image_id: str) -> ImagePython | None:
    """:func:`image_python` from the cache only (None: never asked)."""
    try:
        facts = json.loads(_python_facts(image_id).read_text())
        return ImagePython(str(facts["version"]), str(facts["glibc"]), str(facts["machine"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- wheels -------------------------------------------------------------------------------


def _checkout_root() -> Path | None:
    """The source tree this rlmesh was installed from (an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "rlmesh" / "_native.c").is_file() else None


def _source_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml", root / "setup.py", root / "README.md"]
    for path in sorted((root / "rlmesh").rglob("*")):
        if (
            path.is_file()
            and "__pycache__" not in path.parts
            and path.suffix in (".py", ".c", ".h", ".pyi", ".typed")
        ):
            files.append(path)
    return [f for f in files if f.exists()]


def _run_pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log.info("sandbox: %s", what)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{what}: pip did not finish within {PIP_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise SandboxError(f"{what} failed:\n{(done.stdout + done.stderr).strip()[-4000:]}")


def local_wheel(python: ImagePython) -> Path:
    """A wheel of rlmesh built from the checkout it runs from, cached by the sources' hash.

    rlmesh has a C extension, so the wheel is built by this host's Python
    for its ABI: it fits an image with the same Python minor version and a
    glibc at least the host's (Debian bookworm's python3 is 3.11 with glibc
    2.36, as on a bookworm host).

    Raises:
        SandboxError: rlmesh was not installed from a checkout, the host's
            Python or glibc does not fit the image, or the build failed.
    """
    root = _checkout_root()
    if root is None:
        raise SandboxError(
            'rlmesh_package="local" needs rlmesh installed from a source checkout (pip install -e .)'
        )
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if host != python.version:
        raise SandboxError(
            f"the host's Python is {host} and the image's is {python.version}: a wheel of rlmesh (which "
            "has a C extension) built here would not load there; use a base image with Python "
            f"{host}, or pass rlmesh_package=<path of a wheel built for Python {python.version}>"
        )
    import platform

    libc, host_glibc = platform.libc_ver()
    if python.glibc and libc == "glibc" and _version(host_glibc) > _version(python.glibc):
        raise SandboxError(
            f"this host's glibc {host_glibc} is newer than the image's {python.glibc}: a wheel built "
            "here may not load there; pass rlmesh_package=<path of a wheel built for the image>"
        )
    files = _source_files(root)
    out = _local_wheel_dir(root, files)
    found = sorted(out.glob("rlmesh-*.whl")) if out.is_dir() else []
    if found:
        return found[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        # A copy of the sources: the build never writes into the checkout.
        src = Path(tmp) / "src"
        for path in files:
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        dist = Path(tmp) / "dist"
        _run_pip(
            ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
            "building a wheel of rlmesh from this checkout",
        )
        wheels = sorted(dist.glob("rlmesh-*.whl"))
        if not wheels:
            raise SandboxError("pip wheel made no rlmesh wheel")
        os.rename(dist, out)
    return sorted(out.glob("rlmesh-*.whl"))[0]


def _local_wheel_dir(root: Path, files: Sequence[Path]) -> Path:
    """Where the wheel of these sources is cached: named by their hash."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return cache_dir() / "wheels" / f"rlmesh-{digest.hexdigest()[:24]}"


def _cached_local_wheel() -> Path | None:
    """:func:`local_wheel` from the cache only (None: not built yet, or no checkout)."""
    root = _checkout_root()
    if root is None:
        return None
    out = _local_wheel_dir(root, _source_files(root))
    found = sorted(out.glob("rlmesh-*.whl")) if out.is_dir() else []
    return found[0] if found else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def wheel_requirements(wheel: Path) -> list[str]:
    """A wheel's ``Requires-Dist`` entries that apply without extras."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra ==" not in req.replace('"', "").replace("'", ""):
                out.append(req)
    return out


def _wheelhouse_dir(python: ImagePython, requirements: Sequence[str]) -> tuple[str, Path]:
    """The cache key of a wheelhouse and where it is kept."""
    key = json.dumps([sorted(requirements), python.version, python.platforms], separators=(",", ":"))
    return key, cache_dir() / "wheelhouses" / hashlib.sha256(key.encode()).hexdigest()[:24]


def wheelhouse(python: ImagePython, requirements: Sequence[str]) -> Path:
    """``pip download`` (binary wheels only) ``requirements`` for the image's Python and platform.

    Cached by the requirement list and the target; a missing wheel fails
    here, naming the package and the tags tried, never inside the build.

    Raises:
        SandboxError: pip could not find a wheel for the image.
    """
    key, out = _wheelhouse_dir(python, requirements)
    if (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        dest = Path(tmp) / "wheels"
        args = ["download", "-q", "--only-binary=:all:", "-d", str(dest), "--python-version", python.version]
        args += ["--implementation", "cp", "--abi", python.abi, "--abi", "abi3", "--abi", "none"]
        for platform_tag in python.platforms:
            args += ["--platform", platform_tag]
        if requirements:
            _run_pip(
                [*args, *requirements],
                f"downloading wheels for Python {python.version} ({python.platforms[0]}): "
                + " ".join(requirements),
            )
        else:
            dest.mkdir()
        (dest / ".complete").write_text(key)
        if out.exists():
            shutil.rmtree(out)
        os.rename(dest, out)
    return out


# -- the image ----------------------------------------------------------------------------


@dataclasses.dataclass
class BuildPlan:
    """What goes into a sandbox image.

    Attributes:
        base: the base image reference.
        rlmesh_wheel: rlmesh's wheel (a file).
        wheels: other local wheels to install (files).
        requirements: pip requirement strings, resolved on the host.
        source_dir: an hf:// checkout copied into the image, or None.
    """

    base: str
    rlmesh_wheel: Path
    wheels: list[Path]
    requirements: list[str]
    source_dir: Path | None = None


def dockerfile(base_id: str, installs: list[str], with_source: bool, digest: str) -> str:
    """The two-stage Dockerfile: the wheelhouse stays in the build stage, never in a layer of the image."""
    install = " ".join(json.dumps(i) for i in installs)
    lines = [
        f"FROM {base_id} AS build",
        "COPY wheelhouse /wheelhouse",
        f"RUN python3 -m venv {VENV} && {VENV}/bin/pip install --no-index --no-cache-dir "
        f"--disable-pip-version-check --find-links /wheelhouse {install}",
        f"FROM {base_id}",
        f"COPY --from=build {VENV} {VENV}",
    ]
    if with_source:
        lines.append(f"COPY source {SOURCE_DIR}")
    lines += [
        f"ENV PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        f"LABEL rlmesh.sandbox.inputs={digest}",
        f'ENTRYPOINT ["{VENV}/bin/python", "-m", "rlmesh.sandbox._bootstrap"]',
    ]
    return "\n".join(lines) + "\n"


class _Progress:
    """Build progress: a bar on a terminal, log lines otherwise."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.bar: Any = None
        self.tty = sys.stderr.isatty()

    def step(self, i: int, n: int, text: str) -> None:
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=n, desc=f"building {self.tag}", unit="step", leave=False)
            self.bar.n = i
            self.bar.set_postfix_str(text[:40])
            self.bar.refresh()
        else:
            log.info("sandbox build %s: Step %d/%d : %s", self.tag, i, n, text[:120])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")
_LAYER = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


def _build(api: Any, context: Path, tag: str, labels: dict[str, str]) -> str:
    progress = _Progress(tag)
    tail: list[str] = []
    image_id = ""
    last_layer = stage_one = ""
    started = time.monotonic()
    try:
        for chunk in api.api.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            labels=labels,
            decode=True,
            timeout=BUILD_TIMEOUT,
        ):
            if "stream" in chunk:
                text = str(chunk["stream"]).rstrip()
                if text:
                    tail = (tail + text.splitlines())[-40:]
                match = _STEP.match(text)
                if match:
                    progress.step(int(match[1]), int(match[2]), match[3])
                    if match[3].startswith("FROM ") and last_layer:
                        stage_one = last_layer  # the build stage ends where the second FROM begins
                layer = _LAYER.match(text)
                if layer:
                    last_layer = layer[1]
            elif "aux" in chunk and isinstance(chunk["aux"], dict):
                image_id = str(chunk["aux"].get("ID", image_id))
            elif "errorDetail" in chunk or "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
                raise SandboxError(f"building the sandbox image {tag} failed: {detail}\n" + "\n".join(tail))
    except SandboxError:
        raise
    except Exception as exc:
        raise SandboxError(f"building the sandbox image {tag} failed: {exc}\n" + "\n".join(tail)) from exc
    finally:
        progress.close()
    if stage_one:
        # The build stage's image holds the wheelhouse and nothing else needs it: an
        # untagged leftover per build otherwise (the classic builder keeps it).
        with contextlib.suppress(Exception):
            api.images.remove(stage_one, noprune=False)
    log.info("sandbox: built %s in %.1fs", tag, time.monotonic() - started)
    return image_id


def ensure_image(
    api: Any, plan: BuildPlan, python: ImagePython, base_id: str, version: str
) -> tuple[str, bool]:
    """The image for ``plan``: ``(tag, built)``; an image with the same inputs is reused.

    Raises:
        SandboxError: a wheel is missing for the image, or the build failed
            (with pip's last lines).
    """
    house = wheelhouse(python, plan.requirements)
    tag, hexdigest, wheels, installs = _inputs(plan, house, base_id, version)
    docker = sys.modules.get("docker")
    try:
        api.images.get(tag)
        return tag, False
    except Exception as exc:
        if docker is None or not isinstance(exc, docker.errors.ImageNotFound):
            raise
    with tempfile.TemporaryDirectory(prefix="rlmesh-build-") as tmp:
        context = Path(tmp)
        (context / "wheelhouse").mkdir()
        for wheel in wheels:
            target = context / "wheelhouse" / wheel.name
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
        if plan.source_dir is not None:
            shutil.copytree(plan.source_dir, context / "source")
        (context / "Dockerfile").write_text(
            dockerfile(base_id, installs, plan.source_dir is not None, hexdigest)
        )
        _build(api, context, tag, {"rlmesh.sandbox.image": "1", "rlmesh.sandbox.inputs": hexdigest})
    return tag, True


def _inputs(
    plan: BuildPlan, house: Path, base_id: str, version: str
) -> tuple[str, str, list[Path], list[str]]:
    """The image's tag, its inputs' full hash, the wheels of its wheelhouse and what pip installs."""
    wheels = sorted({*house.glob("*.whl"), plan.rlmesh_wheel, *plan.wheels}, key=lambda p: p.name)
    installs = [f"/wheelhouse/{plan.rlmesh_wheel.name}"]
    installs += [f"/wheelhouse/{w.name}" for w in plan.wheels]
    installs += list(plan.requirements)
    digest = hashlib.sha256()
    text = dockerfile(base_id, installs, plan.source_dir is not None, "")
    digest.update(text.encode() + b"\0" + base_id.encode() + b"\0" + version.encode() + b"\0")
    for wheel in wheels:
        digest.update(wheel.name.encode() + b"\0" + _sha256(wheel).encode() + b"\0")
    if plan.source_dir is not None:
        for path in sorted(plan.source_dir.rglob("*")):
            if path.is_file():
                rel = str(path.relative_to(plan.source_dir)).encode()
                digest.update(rel + b"\0" + _sha256(path).encode() + b"\0")
    hexdigest = digest.hexdigest()
    return f"rlmesh-sandbox:{hexdigest[:16]}", hexdigest, wheels, installs


def existing_image(api: Any, packages: Sequence[str], *, base_image: str | None = None) -> str | None:
    """The tag of a sandbox's image if it is already built, else None; builds, downloads and runs nothing.

    The sandbox is one with a Gymnasium-id or ``module:factory`` source that
    names ``gymnasium`` among ``packages`` (pip requirement strings, no
    wheel files), rlmesh built from this checkout, and the default base
    image (or ``base_image``). None also when an input is not in the cache
    yet (the base image, its Python's facts, rlmesh's wheel, the
    wheelhouse): a start would have to make it first.
    """
    from .. import __version__

    base = base_image or os.environ.get("RLMESH_SANDBOX_BASE_IMAGE")
    candidates = [base] if base else [LOCAL_BASE, PUBLIC_BASE]
    base_id = python = None
    for name in candidates:
        try:
            base_id = str(api.images.get(name).id)
        except Exception:  # not here: a start would pull or fail; either way, not built
            continue
        break
    if base_id is None or (python := _cached_image_python(base_id)) is None:
        return None
    wheel = _cached_local_wheel()
    if wheel is None:
        return None
    # As the sandbox's own plan: rlmesh's requirements, then the packages, duplicates dropped.
    requirements = list(dict.fromkeys([*wheel_requirements(wheel), *packages]))
    _, house = _wheelhouse_dir(python, requirements)
    if not (house / ".complete").is_file():
        return None
    tag = _inputs(BuildPlan(base or candidates[0], wheel, [], requirements), house, base_id, __version__)[0]
    try:
        api.images.get(tag)
    except Exception:
        return None
    return tag


# -- the base image -----------------------------------------------------------------------


def build_base_image(
    api: Any,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    tag: str = LOCAL_BASE,
    cache: str | None = None,
    force: bool = False,
) -> tuple[str, bool]:
    """A registry-free Debian base with python3 (debootstrap, then ``docker import``); ``(tag, built)``.

    Tagged ``tag`` and ``<repository>:<suite>-<hash of suite and packages>``;
    reused when that second tag exists (unless ``force``). Needs root,
    ``debootstrap`` and a Debian mirror (the host's apt mirror by default),
    no container registry.

    Raises:
        SandboxError: not root, no debootstrap, or debootstrap failed.
    """
    packages = ["python3", "python3-venv"]
    key = hashlib.sha256(json.dumps([suite, packages]).encode()).hexdigest()[:12]
    repository = tag.rpartition(":")[0] or tag
    pinned = f"{repository}:{suite}-{key}"
    if not force:
        try:
            image = api.images.get(pinned)
            image.tag(repository, tag.rpartition(":")[2] or "latest")
            return pinned, False
        except Exception as exc:
            docker = sys.modules.get("docker")
            if docker is None or not isinstance(exc, docker.errors.ImageNotFound):
                raise
    if os.geteuid() != 0:
        raise SandboxError("rlmesh sandbox base-image runs debootstrap, which needs root")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise SandboxError("rlmesh sandbox base-image needs debootstrap (apt-get install debootstrap)")
    mirror = mirror or _apt_mirror()
    with tempfile.TemporaryDirectory(prefix="rlmesh-base-") as tmp:
        rootfs = os.path.join(tmp, "rootfs")
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(packages)}"]
        if cache:
            os.makedirs(cache, exist_ok=True)
            cmd.append(f"--cache-dir={os.path.abspath(cache)}")
        cmd += [suite, rootfs, mirror]
        log.info("sandbox: %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
        if done.returncode != 0:
            raise SandboxError(f"debootstrap failed:\n{(done.stdout + done.stderr)[-4000:]}")
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in Path(rootfs, sub).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tarball = os.path.join(tmp, "rootfs.tar")
        subprocess.run(["tar", "-C", rootfs, "-cf", tarball, "."], check=True, timeout=BUILD_TIMEOUT)
        api.api.import_image_from_file(tarball, repository=repository, tag=f"{suite}-{key}")
    image = api.images.get(pinned)
    image.tag(repository, tag.rpartition(":")[2] or "latest")
    return pinned, True


def _apt_mirror() -> str:
    """The host's Debian mirror (from apt's sources), else deb.debian.org."""
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s", text, re.M):
            return match[1]
    return "http://deb.debian.org/debian"
