"""The archive's signed index, as the project-local apt fetched and verified it.

`apt-get update` (provision.LocalApt, sources `signed-by` the Debian archive
keyring, no option that allows unsigned repositories) checks each suite's
InRelease signature and every Packages file against the hashes InRelease
lists.  This module reads the result: the Packages stanzas (name, version,
architecture, SHA256 of the .deb) and, with gpgv, which key signed each
InRelease, so a recipe can record what vouched for its pins.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from buddylab.errors import SetupError


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    arch: str
    sha256: str
    filename: str


def parse_packages(text: str) -> list[IndexEntry]:
    """Stanzas of a Packages file (deb822): the fields a pin needs."""
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line or line[0] in " \t":
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if {"Package", "Version", "SHA256"} <= fields.keys():
            entries.append(IndexEntry(fields["Package"], fields["Version"],
                                      fields.get("Architecture", "amd64"), fields["SHA256"].lower(),
                                      fields.get("Filename", "")))
    return entries


class AptIndex:
    """Every package stanza of the suites a LocalApt fetched (lists directory)."""

    def __init__(self, lists: Path, prefix: str = "linux-") -> None:
        self.lists = lists
        self.entries: list[IndexEntry] = []
        files = sorted(f for f in lists.glob("*_Packages*") if f.name.split("_")[-1].startswith("Packages"))
        if not files:
            raise SetupError(f"no Packages index under {lists}: apt-get update fetched nothing")
        for f in files:
            text = read_index_file(f)
            # Only the packages named `prefix`*: a Packages file is tens of MiB.
            text = "\n\n".join(s for s in text.split("\n\n")
                               if s.startswith(f"Package: {prefix}"))
            self.entries.extend(parse_packages(text))

    def find(self, name: str, version: str) -> IndexEntry | None:
        for e in self.entries:
            if e.name == name and e.version == version:
                return e
        return None

    def versions(self, name: str) -> list[str]:
        """Versions of `name` in the index, newest first."""
        return sort_versions({e.version for e in self.entries if e.name == name})


APT_HELPER = Path("/usr/lib/apt/apt-helper")


def read_index_file(path: Path) -> str:
    """An index file as apt stored it (apt may keep it compressed: lz4, gz, xz)."""
    if path.name.endswith("_Packages"):
        return path.read_text(errors="replace")
    proc = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True)
    if proc.returncode != 0:
        raise SetupError(f"apt-helper cat-file {path.name} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def compare_versions(a: str, b: str) -> int:
    """Debian version order, as dpkg --compare-versions decides it."""
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


def sort_versions(versions: set[str]) -> list[str]:
    return sorted(versions, key=cmp_to_key(compare_versions), reverse=True)


def inrelease_files(lists: Path) -> list[Path]:
    return sorted(lists.glob("*_InRelease"))


def signer_fingerprints(inrelease: Path, keyring: Path) -> list[str]:
    """Fingerprints of the good signatures on an InRelease file (gpgv VALIDSIG)."""
    proc = subprocess.run(["gpgv", "--status-fd", "1", "--keyring", str(keyring), str(inrelease)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"gpgv: {inrelease.name} is not signed by a key of {keyring}")
    return [line.split()[2] for line in proc.stdout.splitlines()
            if line.startswith("[GNUPG:] VALIDSIG ")]
