from pathlib import Path

import pytest

from buddylab.kernel import mirror
from buddylab.errors import SetupError

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bullseye main
deb http://one.example/debian-security bullseye-security main
deb https://other.example/apt cloud-sdk main
"""


def test_deb822_finds_archive_and_security():
    sources = mirror.parse_deb822_sources(DEB822)
    assert mirror.find_debian_mirrors(sources) == (
        "http://mirror.example/debian", "http://mirror.example/debian-security")


def test_one_line_format_skips_options_and_comments():
    sources = mirror.parse_one_line_sources(ONE_LINE)
    assert [s.uri for s in sources] == [
        "http://one.example/debian", "http://one.example/debian-security",
        "https://other.example/apt"]
    assert mirror.find_debian_mirrors(sources) == (
        "http://one.example/debian", "http://one.example/debian-security")


def test_non_debian_suites_are_ignored():
    sources = mirror.parse_one_line_sources("deb https://other.example/apt cloud-sdk main\n")
    assert mirror.find_debian_mirrors(sources) == (None, None)


def test_disabled_stanza_is_ignored():
    text = "Enabled: no\nTypes: deb\nURIs: http://x.example/debian\nSuites: bookworm\n"
    assert mirror.parse_deb822_sources(text) == []


def test_environment_overrides_host(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(mirror, "APT_SOURCES", (tmp_path / "none",))
    monkeypatch.setenv("BUDDYLAB_DEBIAN_MIRROR", "http://env.example/debian")
    monkeypatch.setenv("BUDDYLAB_DEBIAN_SECURITY_MIRROR", "http://env.example/debian-security")
    assert mirror.debian_mirrors() == mirror.DebianMirrors(
        "http://env.example/debian", "http://env.example/debian-security")


def test_no_mirror_is_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(mirror, "read_host_sources", lambda: [])
    monkeypatch.delenv("BUDDYLAB_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("BUDDYLAB_DEBIAN_SECURITY_MIRROR", raising=False)
    with pytest.raises(SetupError, match="BUDDYLAB_DEBIAN_MIRROR"):
        mirror.debian_mirrors()


def test_this_hosts_sources_name_a_debian_mirror():
    """The machine this runs on must give the project its mirrors."""
    archive, security = mirror.find_debian_mirrors(mirror.read_host_sources())
    assert archive and security
