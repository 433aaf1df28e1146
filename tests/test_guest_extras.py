"""Extra guest modules and QEMU arguments: from a recipe's [guest] or the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from buddylab import errors
from buddylab.errors import SetupError
from buddylab.guest.image import guest_module_paths
from buddylab.guest.qemu import QemuConfig
from buddylab.kernel.recipe import load_kernel_pins


def test_a_module_comes_after_its_dependencies(kernel):
    paths = guest_module_paths(kernel, ("virtio_net",))
    names = [p.name for p in paths]
    builtin = (kernel.modules_dir / "modules.builtin").read_text()
    if "virtio_net.ko" in builtin:
        assert "virtio_net.ko" not in names  # built in: nothing to load
    else:
        assert names[-1] == "virtio_net.ko"
        assert "net_failover.ko" in names and names.index("failover.ko") < names.index("net_failover.ko")


def test_an_unknown_module_is_one_line(kernel):
    with pytest.raises(SetupError) as e:
        guest_module_paths(kernel, ("no_such_module",))
    assert str(e.value) == (f"guest module no_such_module of kernel {kernel.release}: "
                            "neither a module nor built in")


def test_recipe_guest_table_is_read(tmp_path: Path):
    recipe = tmp_path / "k.toml"
    recipe.write_text((Path(__file__).parents[1] / "images" / "debian-5.10-cloud.toml").read_text()
                      + '\n[guest]\nmodules = ["qemu_fw_cfg"]\nqemu_args = ["-device", "vmcoreinfo"]\n')
    pins = load_kernel_pins(str(recipe))
    assert pins.guest.modules == ("qemu_fw_cfg",)
    assert pins.guest.qemu_args == ("-device", "vmcoreinfo")
    argv = QemuConfig(Path("k"), Path("i"), extra_args=list(pins.guest.qemu_args)).argv(qmp_fd=3)
    assert argv[-2:] == ["-device", "vmcoreinfo"]


def test_boot_timeout_comes_from_the_recipe_unless_given(tmp_path: Path):
    import argparse

    from buddylab import cli

    recipe = tmp_path / "k.toml"
    base = (Path(__file__).parents[1] / "images" / "debian-5.10-cloud.toml").read_text()
    recipe.write_text(base + "\n[guest]\nboot_timeout = 240\n")
    p = argparse.ArgumentParser()
    cli.add_guest_options(p)
    assert cli.guest_options(p.parse_args(["--kernel", str(recipe)])).boot_timeout == 240
    assert cli.guest_options(p.parse_args(["--kernel", str(recipe), "--boot-timeout", "9"])).boot_timeout == 9
    assert cli.guest_options(p.parse_args(["--kernel", "debian-5.10-cloud"])).boot_timeout == 60
    recipe.write_text(base + "\n[guest]\nboot_timeout = \"soon\"\n")
    with pytest.raises(SetupError, match="malformed kernel recipe"):
        load_kernel_pins(str(recipe))


def test_unbalanced_qemu_args_are_a_usage_error(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "buddylab.cli", "run", "true", "--qemu-args", "-device 'x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == errors.EXIT_USAGE
    assert proc.stderr.strip() == "buddylab: --qemu-args: No closing quotation"


@pytest.mark.qemu
def test_vmcoreinfo_device_with_the_guests_fw_cfg_module(prepared):
    """`-device vmcoreinfo` and qemu_fw_cfg.ko, named on the command line, give the guest's fw_cfg entry."""
    proc = subprocess.run(
        [sys.executable, "-m", "buddylab.cli", "run", "--guest-module", "qemu_fw_cfg",
         "--qemu-args", "-device vmcoreinfo",
         "ls /sys/firmware/qemu_fw_cfg/by_name/etc/"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "vmcoreinfo" in proc.stdout
