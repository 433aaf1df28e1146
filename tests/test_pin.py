"""`buddylab kernel pin`: index parsing, re-pin suggestions, recipes that load, apt kept verifying."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import errors
from buddylab.errors import UsageError
from buddylab.kernel import pin, provision
from buddylab.kernel.aptindex import AptIndex, parse_packages, sort_versions
from buddylab.kernel.recipe import PinnedDeb, load_kernel_pins

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGES = FIXTURES / "apt" / "bullseye-cloud_Packages"


@pytest.fixture()
def index(tmp_path: Path) -> AptIndex:
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy(PACKAGES, lists / "mirror_dists_bullseye_main_binary-amd64_Packages")
    return AptIndex(lists)


def test_packages_index_parses_name_version_arch_and_hash():
    entries = parse_packages(PACKAGES.read_text())
    common = [e for e in entries if e.name == "linux-headers-5.10.0-32-common"]
    assert [(e.version, e.arch) for e in common] == [("5.10.223-1", "all")]
    (image,) = [e for e in entries if e.name == "linux-image-5.10.0-46-cloud-amd64"]
    # The pin of images/debian-5.10-cloud.toml is the index's hash.
    assert image.sha256 == load_kernel_pins().image.sha256


def test_versions_are_in_debian_order(index: AptIndex):
    assert index.versions("linux-kbuild-5.10") == ["5.10.262-1", "5.10.223-1"]
    # Not string order: 5.10.9 is older than 5.10.10, ~ sorts before everything.
    assert sort_versions({"5.10.9-1", "5.10.10-1", "5.10.10-1~bpo1"}) == \
        ["5.10.10-1", "5.10.10-1~bpo1", "5.10.9-1"]


def test_repin_moves_every_package_to_the_newest_abi(index: AptIndex, tmp_path: Path):
    old = load_kernel_pins(str(FIXTURES / "recipes" / "gone-5.10-cloud.toml"))
    specs = provision.repin_specs(old, index)
    assert specs == ["linux-image-5.10.0-46-cloud-amd64=5.10.262-1",
                     "linux-headers-5.10.0-46-cloud-amd64=5.10.262-1",
                     "linux-headers-5.10.0-46-common=5.10.262-1",
                     "linux-kbuild-5.10=5.10.262-1"]


def test_not_served_is_one_line_naming_the_repin_command(index: AptIndex):
    old = load_kernel_pins(str(FIXTURES / "recipes" / "gone-5.10-cloud.toml"))
    err = provision.NotServed("linux-image-5.10.0-9-cloud-amd64=5.10.70-1",
                              "is no longer in the archive's index")
    msg = provision.not_served_message(old, index, err)
    assert "\n" not in msg
    assert "re-pin with: buddylab kernel pin linux-image-5.10.0-46-cloud-amd64=5.10.262-1 " in msg
    assert msg.endswith("--name gone-5.10-cloud")


def test_written_recipe_loads_as_pinned(tmp_path: Path):
    image = PinnedDeb("linux-image-5.10.0-32-cloud-amd64-unsigned", "5.10.223-1", "amd64", "a" * 64)
    common = PinnedDeb("linux-headers-5.10.0-32-common", "5.10.223-1", "all", "b" * 64)
    text = pin.recipe_text("x", "5.10.0-32-cloud-amd64", ("bullseye", "bullseye-security"), image,
                           [common], ("F" * 40,), ((image.name, image.version),))
    path = tmp_path / "x.toml"
    path.write_text(text)
    pins = load_kernel_pins(str(path))
    assert pins.name == "x" and pins.release == "5.10.0-32-cloud-amd64"
    assert pins.debs == (image, common)


def test_bad_specs_are_usage_errors():
    with pytest.raises(UsageError, match="is not PACKAGE=VERSION"):
        pin.parse_spec("linux-image-5.10.0-32-cloud-amd64")
    with pytest.raises(UsageError, match="--suite"):
        pin.default_suites("linux-image-3.2.0-4-amd64")
    assert pin.default_suites("linux-image-6.1.0-57-cloud-amd64") == ("bookworm", "bookworm-security")


def test_local_apt_keeps_verifying_signatures(tmp_path: Path, monkeypatch):
    """Nothing in the project-local apt weakens apt's InRelease and hash checks."""
    monkeypatch.setenv("BUDDYLAB_DEBIAN_MIRROR", "http://mirror.example/debian")
    monkeypatch.setenv("BUDDYLAB_DEBIAN_SECURITY_MIRROR", "http://mirror.example/debian-security")
    apt = provision.LocalApt(tmp_path / "apt", ("bullseye", "bullseye-security"))
    apt._write_config()
    sources = (tmp_path / "apt" / "sources.list").read_text()
    assert sources.count(f"signed-by={provision.DEBIAN_KEYRING}") == 2
    assert "trusted" not in sources
    options = " ".join(apt._options()).lower()
    for weakening in ("allowinsecure", "allowunauthenticated", "allow-unauthenticated",
                      "check-valid-until", "allowdowngradetoinsecure", "gpgv"):
        assert weakening not in options


@pytest.mark.archive
def test_a_recipe_the_archive_no_longer_serves_fails_in_one_line(tmp_path: Path):
    env = {"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin",
           "BUDDYLAB_CACHE": str(tmp_path / "cache")}
    recipe = FIXTURES / "recipes" / "gone-5.10-cloud.toml"
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "kernel", "fetch", str(recipe)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == errors.EXIT_SETUP, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "linux-image-5.10.0-9-cloud-amd64=5.10.70-1 is no longer in the archive's index" in proc.stderr
    assert "re-pin with: buddylab kernel pin linux-image-5.10.0-" in proc.stderr
    assert "--name gone-5.10-cloud" in proc.stderr


@pytest.mark.archive
def test_a_listed_but_unserved_package_is_one_line_naming_the_signed_twin(tmp_path: Path):
    """bullseye lists linux-image-5.10.0-46-cloud-amd64-unsigned but answers 404 for it."""
    env = {"BUDDYLAB_RESULTS": str(tmp_path / "results"), "PATH": "/usr/bin:/bin",
           "BUDDYLAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "kernel", "pin",
                           "linux-image-5.10.0-46-cloud-amd64-unsigned=5.10.262-1",
                           "--output", str(tmp_path / "x.toml")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == errors.EXIT_SETUP
    assert proc.stderr == ("buddylab: linux-image-5.10.0-46-cloud-amd64-unsigned=5.10.262-1 is listed in "
                           "the archive's index but not served (404): pin the signed twin "
                           "linux-image-5.10.0-46-cloud-amd64=5.10.262-1\n")
    assert not (tmp_path / "x.toml").exists()
