"""Find the host's Debian mirror in its apt sources, never hard-coding one.

The project fetches bullseye packages through whatever Debian mirror the host
already uses.  `BUDDYLAB_DEBIAN_MIRROR` and `BUDDYLAB_DEBIAN_SECURITY_MIRROR`
override what the sources say.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from buddylab.errors import SetupError

APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DEBIAN_CODENAMES = frozenset(
    {"buster", "bullseye", "bookworm", "trixie", "forky", "sid",
     "oldoldstable", "oldstable", "stable", "testing", "unstable"}
)


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]


@dataclass(frozen=True)
class DebianMirrors:
    archive: str
    security: str


def parse_one_line_sources(text: str) -> list[AptSource]:
    """Parse the classic `deb [opts] uri suite comp...` format."""
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            sources.append(AptSource(words[0], (words[1],)))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse the deb822 `.sources` format (stanzas of `Field: value`)."""
    sources = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        suites = tuple(fields.get("suites", "").split())
        for uri in fields.get("uris", "").split():
            sources.append(AptSource(uri, suites))
    return sources


def read_host_sources(paths: tuple[Path, ...] = APT_SOURCES) -> list[AptSource]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(p.iterdir()))
        elif p.is_file():
            files.append(p)
    sources = []
    for f in files:
        if f.suffix == ".sources":
            sources.extend(parse_deb822_sources(f.read_text(errors="replace")))
        elif f.suffix == ".list" or f.name == "sources.list":
            sources.extend(parse_one_line_sources(f.read_text(errors="replace")))
    return sources


def find_debian_mirrors(sources: list[AptSource]) -> tuple[str | None, str | None]:
    """The first Debian archive and security URIs among `sources`."""
    archive = security = None
    for src in sources:
        for suite in src.suites:
            base, _, pocket = suite.partition("-")
            if base not in DEBIAN_CODENAMES:
                continue
            if pocket == "security" and security is None:
                security = src.uri.rstrip("/")
            elif pocket == "" and archive is None:
                archive = src.uri.rstrip("/")
    return archive, security


def debian_mirrors() -> DebianMirrors:
    """The mirrors to use: environment first, then the host's apt sources."""
    archive, security = find_debian_mirrors(read_host_sources())
    archive = os.environ.get("BUDDYLAB_DEBIAN_MIRROR") or archive
    security = os.environ.get("BUDDYLAB_DEBIAN_SECURITY_MIRROR") or security
    if not archive or not security:
        raise SetupError(
            "no Debian mirror found in /etc/apt/sources.list*: set "
            "BUDDYLAB_DEBIAN_MIRROR and BUDDYLAB_DEBIAN_SECURITY_MIRROR "
            "(the URIs of a Debian archive and of its security archive)"
        )
    return DebianMirrors(archive, security)
