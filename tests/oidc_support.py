"""A real OpenID Connect provider for the sign-in tests: npm ``oidc-provider`` v9 on the
machine's Node.js, installed once into a cache folder and started on a free loopback port.

The install lives in ``$XDG_CACHE_HOME/cxrlabel-tests/oidc-provider-9`` (default
``~/.cache``), so later test sessions start the provider at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from live_server import free_port

PROVIDER_SCRIPT = Path(__file__).parent / "oidc" / "provider.mjs"
CLIENT_ID = "cxrlabel"
CLIENT_SECRET = "test-client-secret-for-cxrlabel-sign-in"


def node_tools() -> tuple[str, str]:
    """(node, npm), or skip with the reason: the provider runs on Node.js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required in CI (apt-get install nodejs npm)")
        pytest.skip("node/npm not installed: the OpenID provider tests need Node.js and npm")
    return node, npm


def provider_dir(npm: str) -> Path:
    """The cached install of ``oidc-provider@9`` (installed from the npm registry the first
    time, into a temporary folder then renamed, so a failed install leaves nothing half-made)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = cache / "cxrlabel-tests" / "oidc-provider-9"
    if (target / "node_modules" / "oidc-provider" / "package.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="oidc-provider-", dir=target.parent))
    (staging / "package.json").write_text('{"private": true, "type": "module"}\n')
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "oidc-provider@9"],
        cwd=staging,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"npm install oidc-provider@9 failed:\n{done.stderr[-2000:]}")
    try:
        staging.rename(target)
    except OSError:  # another test session installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextmanager
def running_provider(redirect_uri: str, groups_file: Path) -> Iterator[str]:
    """Start the provider for ``redirect_uri``; yields its issuer URL. Accounts' groups are
    read from ``groups_file`` (JSON ``{"login": ["group", ...]}``) at each look-up."""
    if not groups_file.exists():
        groups_file.write_text("{}")
    node, npm = node_tools()
    folder = provider_dir(npm)
    script = folder / "provider.mjs"  # next to node_modules, so the import resolves
    shutil.copyfile(PROVIDER_SCRIPT, script)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [node, str(script), str(port), redirect_uri, CLIENT_SECRET, str(groups_file)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(issuer, proc, log)
            yield issuer
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for(issuer: str, proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the OpenID provider exited:\n{log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("the OpenID provider did not answer within 60 s")
