"""The ELF check on real modules of the target kernel and on altered copies."""

from pathlib import Path

import pytest

from buddylab.kernel import elfcheck
from buddylab.errors import SetupError
from buddylab.kernel.provision import Kernel


def _shipped(kernel: Kernel, name: str) -> Path:
    found = sorted(kernel.modules_dir.rglob(f"{name}.ko"))
    if not found:
        pytest.skip(f"{name} is not a module of {kernel.release} (built in or not configured)")
    return found[0]


def _with_modinfo_replaced(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    assert len(old) == len(new)
    data = src.read_bytes()
    assert data.count(old) == 1
    dst.write_bytes(data.replace(old, new))
    return dst


def test_shipped_module_passes(kernel: Kernel):
    ko = _shipped(kernel, "virtio_net")
    info = elfcheck.check_module(ko, elfcheck.kernel_vermagic(kernel.modules_dir),
                                 kernel.symvers.read_text())
    assert info.vermagic.startswith(kernel.release + " ")
    assert "alloc_etherdev_mqs" in info.undefined


def test_our_module_passes(kernel: Kernel, module_ko: Path):
    info = elfcheck.check_module(module_ko, elfcheck.kernel_vermagic(kernel.modules_dir),
                                 kernel.symvers.read_text())
    assert info.license == "GPL"
    # 5.10: __alloc_pages_nodemask, alloc_pages_current; 6.1: __alloc_pages, alloc_pages.
    assert info.undefined & {"__alloc_pages_nodemask", "alloc_pages_current", "__alloc_pages", "alloc_pages"}


def test_module_for_another_kernel_is_refused(kernel: Kernel, tmp_path: Path):
    """A module the kernel ships, its vermagic naming another release of the same length."""
    release = kernel.release.encode()
    other_release = release[:-1] + (b"X" if release[-1:] != b"X" else b"Y")
    shipped = sorted(kernel.modules_dir.rglob("*.ko"))[0]
    other = _with_modinfo_replaced(shipped, tmp_path / "other.ko",
                                   b"vermagic=" + release, b"vermagic=" + other_release)
    with pytest.raises(SetupError) as e:
        elfcheck.check_module(other, elfcheck.kernel_vermagic(kernel.modules_dir),
                              kernel.symvers.read_text())
    assert other_release.decode() in str(e.value) and kernel.release in str(e.value)


def test_unexported_symbol_is_named(kernel: Kernel):
    ko = _shipped(kernel, "virtio_net")
    symvers = "".join(line + "\n" for line in kernel.symvers.read_text().splitlines()
                      if "\talloc_etherdev_mqs\t" not in line)
    with pytest.raises(SetupError, match="alloc_etherdev_mqs is not exported"):
        elfcheck.check_module(ko, elfcheck.kernel_vermagic(kernel.modules_dir), symvers)


def test_gpl_only_symbol_refused_to_non_gpl_module(kernel: Kernel, tmp_path: Path):
    ko = _shipped(kernel, "virtio_net")
    info = elfcheck.read_module_info(ko)
    assert info.license == "GPL"
    relicensed = _with_modinfo_replaced(ko, tmp_path / "bsd.ko", b"license=GPL\0",
                                        b"license=BSD\0")
    exports = elfcheck.parse_symvers(kernel.symvers.read_text())
    gpl_used = sorted(s for s in info.undefined if s in exports and exports[s].gpl_only)
    assert gpl_used, "virtio_net uses GPL-only symbols"
    with pytest.raises(SetupError, match=f"GPL-only symbol {gpl_used[0]}"):
        elfcheck.check_module(relicensed, elfcheck.kernel_vermagic(kernel.modules_dir),
                              kernel.symvers.read_text())


def test_not_a_module_is_refused(tmp_path: Path):
    with pytest.raises(Exception):
        elfcheck.read_module_info(Path("/bin/true"))
