"""The root file system of the testbed's machines: Debian bookworm with systemd, built once by
mmdebstrap from the Debian mirror this machine's apt sources name, cached by its recipe's digest.

Every machine boots from the same read-only copy (an overlay gives each its own writable layer),
so the image holds only what every host shares: systemd as PID 1, sshd (no host keys: each machine
gets its own), and what the Ansible role and the nemeses need on a host (python3 and venv, libdb,
iptables, libfaketime, fuse3), so provisioning needs no network beyond the testbed's bridge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = ".dynamo/rootfs"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "openssh-sftp-server", "python3", "python3-venv",
            "libdb-dev", "fuse3", "libfaketime", "iptables", "iproute2", "procps")
#: What every machine's sshd reads (the testbed writes each machine's own host key and root's key).
SSHD_CONFIG = "\n".join([
    "HostKey /etc/ssh/ssh_host_ed25519_key",
    "PermitRootLogin prohibit-password",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "MaxStartups 100:30:200",
    "MaxSessions 100",
]) + "\n"
#: Shell run inside the finished image (mmdebstrap's customize hook, "$1" is the root): no shared
#: host keys, the sshd settings above, a machine id per machine.
CUSTOMIZE = [
    'rm -f "$1"/etc/ssh/ssh_host_*',
    f"printf %s '{SSHD_CONFIG}' > \"$1\"/etc/ssh/sshd_config.d/testbed.conf",
    # Empty, not absent: each machine's systemd makes its own id at first boot.
    'rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id && : > "$1"/etc/machine-id',
]


class RootfsError(Exception):
    """The image cannot be built; the message says why."""


def mirror_from_sources(texts: list[str]) -> str | None:
    """The first Debian mirror (not the security archive) named by apt sources: deb822 ``.sources``
    stanzas (``URIs:``) or one-line ``deb URI SUITE ...`` entries."""
    for text in texts:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0] == "URIs:":
                candidates = words[1:]
            elif len(words) >= 3 and words[0] == "deb":
                candidates = [word for word in words[1:] if "://" in word][:1]
            else:
                continue
            for uri in candidates:
                if "://" in uri and "security" not in uri:
                    return uri.rstrip("/")
    return None


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The mirror this machine's apt uses (so the build works where only that mirror is reachable)."""
    files = sorted((sources / "sources.list.d").glob("*.sources")) + sorted((sources / "sources.list.d").glob("*.list"))
    files.insert(0, sources / "sources.list")
    texts = [path.read_text(errors="replace") for path in files if path.is_file()]
    return mirror_from_sources(texts) or DEFAULT_MIRROR


def recipe(mirror: str) -> dict[str, object]:
    """Everything the image depends on: a change to any of it makes a new image."""
    return {"suite": SUITE, "mirror": mirror, "packages": list(PACKAGES), "customize": CUSTOMIZE}


def image_name(mirror: str) -> str:
    digest = hashlib.sha256(json.dumps(recipe(mirror), sort_keys=True).encode()).hexdigest()[:12]
    return f"{SUITE}-{digest}"


def mmdebstrap_argv(target: Path, mirror: str) -> list[str]:
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", f"--include={','.join(PACKAGES)}"]
    argv += [f"--customize-hook={hook}" for hook in CUSTOMIZE]
    return argv + [SUITE, str(target), mirror]


def ensure_image(cache: str | Path = DEFAULT_CACHE, progress=lambda message: None) -> Path:
    """The image's directory under ``cache``, built first when missing (~1 minute; root). A build
    goes to a temporary directory renamed into place once complete, so a crash never leaves a
    half-built image that looks finished."""
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap is missing: apt-get install mmdebstrap (scripts/bootstrap does it as root)")
    mirror = apt_mirror()
    cache = Path(cache).resolve()
    image = cache / image_name(mirror)
    if (image / "etc" / "os-release").exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f"{image.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    progress(f"building the machines' root file system {image} from {mirror} (once, about a minute)")
    started = time.monotonic()
    result = subprocess.run(mmdebstrap_argv(building, mirror), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-5:]
        raise RootfsError(f"mmdebstrap failed (exit {result.returncode}): " + " | ".join(last))
    (building / ".dynactl-recipe.json").write_text(json.dumps(recipe(mirror), indent=2) + "\n")
    building.rename(image)
    progress(f"built {image} in {time.monotonic() - started:.0f}s")
    return image
