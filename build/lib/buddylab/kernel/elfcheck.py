"""Check a built module against the target kernel before booting it.

Reads the .ko with pyelftools: its vermagic must equal the kernel's, and
every undefined symbol must be exported by the kernel (Module.symvers), a
GPL-only export only to a GPL-compatible module.  What insmod would refuse
is refused here, with the symbol or the two vermagics named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from buddylab.errors import SetupError

# kernel/module.c: license_is_gpl_compatible()
GPL_COMPATIBLE = frozenset(
    {"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL"}
)


@dataclass(frozen=True)
class ModuleInfo:
    vermagic: str
    license: str
    name: str
    undefined: frozenset[str]


@dataclass(frozen=True)
class Export:
    symbol: str
    gpl_only: bool


def read_module_info(ko: Path) -> ModuleInfo:
    with ko.open("rb") as f:
        elf = ELFFile(f)
        modinfo = elf.get_section_by_name(".modinfo")
        if modinfo is None:
            raise SetupError(f"{ko}: no .modinfo section: not a kernel module")
        fields: dict[str, str] = {}
        for entry in modinfo.data().split(b"\0"):
            key, sep, value = entry.decode(errors="replace").partition("=")
            if sep and key not in fields:
                fields[key] = value
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise SetupError(f"{ko}: no symbol table")
        undefined = frozenset(
            s.name for s in symtab.iter_symbols()
            if s.name and s["st_shndx"] == "SHN_UNDEF"
        )
    return ModuleInfo(
        vermagic=fields.get("vermagic", ""),
        license=fields.get("license", ""),
        name=fields.get("name", ""),
        undefined=undefined,
    )


def parse_symvers(text: str) -> dict[str, Export]:
    """Module.symvers: CRC, symbol, module, export type[, namespace], tab-separated."""
    exports = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < 4:
            continue
        exports[cols[1]] = Export(cols[1], cols[3] == "EXPORT_SYMBOL_GPL")
    return exports


def kernel_vermagic(modules_dir: Path) -> str:
    """The target kernel's vermagic, read from a module it ships."""
    for ko in sorted(modules_dir.rglob("*.ko")):
        vermagic = read_module_info(ko).vermagic
        if vermagic:
            return vermagic
    raise SetupError(f"no module with a vermagic under {modules_dir}")


def check_module(ko: Path, want_vermagic: str, symvers_text: str) -> ModuleInfo:
    """Raise SetupError naming what the target kernel would refuse."""
    info = read_module_info(ko)
    want = want_vermagic
    if info.vermagic != want:
        raise SetupError(
            f"{ko.name}: vermagic {info.vermagic!r} does not match the kernel's {want!r}"
        )
    exports = parse_symvers(symvers_text)
    gpl = info.license in GPL_COMPATIBLE
    for sym in sorted(info.undefined):
        export = exports.get(sym)
        if export is None:
            raise SetupError(f"{ko.name}: symbol {sym} is not exported by the target kernel")
        if export.gpl_only and not gpl:
            raise SetupError(
                f"{ko.name}: GPL-only symbol {sym} used by a module licensed {info.license!r}"
            )
    return info
