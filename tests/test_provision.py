"""Provisioning: the pins are enforced, the project-local apt stays local."""

from pathlib import Path

import pytest

from buddylab.kernel import provision
from buddylab.kernel.recipe import PinnedDeb, load_kernel_pins
from buddylab.errors import SetupError


def test_pins_name_the_served_signed_image():
    pins = load_kernel_pins()
    assert pins.image.name == "linux-image-5.10.0-46-cloud-amd64"
    assert all(len(d.sha256) == 64 for d in pins.debs)
    assert {d.version for d in pins.debs} == {"5.10.262-1"}


def test_a_cached_deb_with_the_wrong_hash_is_a_clear_error(tmp_path: Path):
    deb = PinnedDeb("linux-kbuild-5.10", "5.10.262-1", "amd64", "0" * 64)
    (tmp_path / deb.filename).write_bytes(b"not the pinned package")
    with pytest.raises(SetupError, match="SHA256 mismatch for linux-kbuild-5.10_5.10.262-1_amd64.deb"):
        provision.fetch_debs((deb,), ("bullseye",), tmp_path, tmp_path / "apt")


def test_local_apt_configuration_lives_in_its_own_directory(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BUDDYLAB_DEBIAN_MIRROR", "http://mirror.example/debian")
    monkeypatch.setenv("BUDDYLAB_DEBIAN_SECURITY_MIRROR", "http://mirror.example/debian-security")
    apt = provision.LocalApt(tmp_path / "apt", ("bullseye", "bullseye-security"))
    apt._write_config()
    sources = (tmp_path / "apt" / "sources.list").read_text().splitlines()
    keyring = provision.DEBIAN_KEYRING
    assert sources == [
        f"deb [signed-by={keyring}] http://mirror.example/debian bullseye main",
        f"deb [signed-by={keyring}] http://mirror.example/debian-security bullseye-security main",
    ]
    options = apt._options()
    for value in options[1::2]:
        if value.startswith("Dir::"):
            assert str(tmp_path / "apt") in value, value


def test_headers_makefile_holds_no_absolute_path(tmp_path: Path):
    headers = tmp_path / "usr/src/linux-headers-x"
    headers.mkdir(parents=True)
    (headers / "Makefile").write_text("include /usr/src/linux-headers-common/Makefile\n")
    provision.fix_headers_makefile(headers)
    assert (headers / "Makefile").read_text() == \
        "include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-common/Makefile\n"


def test_provisioned_kernel_is_complete(kernel, recipe):
    assert kernel.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage boot header
    if recipe.kind in ("debian", "debs"):
        makefile = (kernel.headers / "Makefile").read_text()
        assert makefile.startswith("include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-")
        assert str(kernel.root) not in makefile and "/usr/src" not in makefile
    assert kernel.symvers.is_file() and kernel.config.is_file()

