"""What a sandbox runs: its source, parsed and resolved (no Docker here).

Sources:

* a Gymnasium id (``CartPole-v1``) or ``gym://ID``: ``gymnasium.make`` in the
  container (Gymnasium is installed, pinned to the host's version when the
  host has it);
* ``module:factory``: the factory is imported in the container, from a
  package given with ``packages=``;
* ``docker://IMAGE`` (or ``image://IMAGE``): a prebuilt image whose command
  runs ``rlmesh serve``; the sandbox sets ``RLMESH_DIAL`` so it dials back;
* ``hf://ORG/REPO@SHA``: a Hugging Face (Git) repository pinned to a full
  commit, whose root holds ``env.py`` with ``make_env`` (and optionally
  ``requirements.txt``); needs ``trust_remote_code=True``, and a pinned
  revision unless ``allow_unpinned_hf=True``. The Git host is
  ``$HF_ENDPOINT`` (default ``https://huggingface.co``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import SandboxError

__all__ = ["Source", "parse_source", "resolve_hf"]

#: The Git host of ``hf://`` sources (``HF_ENDPOINT`` overrides it, as in huggingface_hub).
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
#: How long one git command may take.
GIT_TIMEOUT = 300.0

_GYM_ID = re.compile(r"^(?:[\w.-]+/)?[\w.:-]+-v\d+$")
_HF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[^:\s]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed source.

    Attributes:
        kind: "gym", "factory", "image" or "hf".
        target: the Gymnasium id, ``module:factory``, image reference, or
            ``ORG/REPO`` of a hub repository.
        revision: the hub revision asked for (None: unpinned).
        requested: the text the caller gave.
    """

    kind: str
    target: str
    requested: str
    revision: str | None = None

    @property
    def builds(self) -> bool:
        """True when the sandbox builds an image for this source (every kind but "image")."""
        return self.kind != "image"


def parse_source(source: str) -> Source:
    """Classify ``source`` (see the module's docstring).

    Raises:
        TypeError: not a string.
        ValueError: a form none of the kinds accepts.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    text = source.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme == "gym":
            if not rest:
                raise ValueError("gym:// needs an env id, as gym://CartPole-v1")
            return Source("gym", rest, source)
        if scheme in ("docker", "image"):
            if not rest or any(c.isspace() for c in rest):
                raise ValueError(f"{scheme}:// needs an image reference, as {scheme}://my-env:1.0")
            return Source("image", rest, source)
        if scheme == "hf":
            match = _HF.match(rest)
            if match is None:
                raise ValueError(f"hf:// sources are hf://ORG/REPO@REVISION, got {source!r}")
            return Source("hf", match["repo"], source, match["rev"])
        raise ValueError(f"unknown source scheme {scheme!r} in {source!r} (gym://, docker://, hf://)")
    if _FACTORY.match(text):
        return Source("factory", text, source)
    if _GYM_ID.match(text):
        return Source("gym", text, source)
    raise ValueError(
        f"cannot tell what {source!r} is: use a Gymnasium id (CartPole-v1), gym://ID, "
        "module:factory, docker://IMAGE or hf://ORG/REPO@SHA"
    )


def _git(*args: str, cwd: str | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1"}
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise SandboxError("hf:// sources need git on this host") from None
    except subprocess.TimeoutExpired:
        raise SandboxError(f"git {args[0]} did not finish within {GIT_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise SandboxError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def hf_url(repo: str) -> str:
    """The Git URL of hub repository ``ORG/REPO`` under ``$HF_ENDPOINT``."""
    return f"{os.environ.get('HF_ENDPOINT', HF_DEFAULT_ENDPOINT).rstrip('/')}/{repo}"


def resolve_hf(source: Source, *, allow_unpinned: bool, cache: Path) -> tuple[str, Path]:
    """Check out a hub source at its commit; ``(sha, checkout)``.

    A full 40-hex revision is used as it is; anything else (a branch, a tag,
    none: the default branch) needs ``allow_unpinned`` and is resolved with
    ``git ls-remote``. Checkouts are kept under ``cache`` by commit (read
    only after), without the ``.git`` directory.

    Raises:
        ValueError: an unpinned revision without ``allow_unpinned``.
        SandboxError: git failed, the revision does not exist, or the
            checkout has no ``env.py``.
    """
    rev = source.revision
    url = hf_url(source.target)
    if rev is None or not _SHA.match(rev):
        if not allow_unpinned:
            raise ValueError(
                f"{source.requested!r} is not pinned to a full 40-hex commit: pin it "
                "(hf://ORG/REPO@SHA) or pass allow_unpinned_hf=True"
            )
        ref = rev or "HEAD"
        lines = _git("ls-remote", url, ref).split()
        if not lines:
            raise SandboxError(f"{url} has no revision {ref!r}")
        rev = lines[0]
    checkout = cache / source.target.replace("/", "__") / rev
    if not (checkout / "env.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            work = os.path.join(tmp, "repo")
            _git("init", "-q", work)
            _git("fetch", "-q", "--depth", "1", url, rev, cwd=work)
            _git("-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD", cwd=work)
            got = _git("rev-parse", "HEAD", cwd=work).strip()
            if got != rev:
                raise SandboxError(f"{url} at {rev} checked out as {got}")
            shutil.rmtree(os.path.join(work, ".git"))
            if not os.path.isfile(os.path.join(work, "env.py")):
                raise SandboxError(f"{source.target}@{rev} has no env.py with make_env at its root")
            checkout.parent.mkdir(parents=True, exist_ok=True)
            if checkout.exists():
                shutil.rmtree(checkout)
            os.rename(work, checkout)
    return rev, checkout
