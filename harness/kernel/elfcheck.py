"""Check a built module against the target kernel before booting it.

Reads the .ko with pyelftools: its vermagic must equal the kernel's, and
every undefined symbol must be exported by the kernel (Module.symvers), a
GPL-only export only to a GPL-compatible module.  What insmod would refuse
is refused here, with the symbol or the two vermagics named.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from buddylab.errors import SetupError, UsageError

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
    depends: tuple[str, ...] = ()


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
        depends=tuple(d for d in fields.get("depends", "").split(",") if d),
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


# --- a report for any module (`buddylab elfcheck`, `buddylab check-module`) --------------------

MODVERSION_ENTRY = 64          # struct modversion_info: unsigned long crc; char name[56]


@dataclass
class ElfReport:
    """What insmod would say about a module, and what else is worth knowing; never raises."""

    path: str
    name: str = ""
    license: str = ""
    vermagic: str = ""
    vermagic_expected: str = ""
    undefined: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)       # insmod would refuse
    notes: list[str] = field(default_factory=list)
    gpl_only_used: list[str] = field(default_factory=list)
    crcs_checked: int = 0
    params: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        lines = [f"{self.path}: module {self.name or '?'}, license {self.license or '(none)'}",
                 f"  vermagic: {self.vermagic!r}"
                 + ("" if self.vermagic == self.vermagic_expected
                    else f" (the kernel's: {self.vermagic_expected!r})"),
                 f"  undefined symbols: {len(self.undefined)}, GPL-only among them: "
                 f"{len(self.gpl_only_used)}, modversion CRCs checked: {self.crcs_checked}"]
        if self.params:
            lines.append(f"  parameters: {', '.join(self.params)}")
        lines += [f"  ! {p}" for p in self.problems] + [f"  - {n}" for n in self.notes]
        lines.append("  ELF check: " + ("ok" if self.ok else "insmod would refuse it"))
        return "\n".join(lines)


def read_versions(ko: Path) -> dict[str, int]:
    """The `__versions` section: symbol -> the CRC the module was built against."""
    out: dict[str, int] = {}
    with ko.open("rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name("__versions")
        if sec is None:
            return out
        data = sec.data()
        little = elf.little_endian
    for off in range(0, len(data) - MODVERSION_ENTRY + 1, MODVERSION_ENTRY):
        crc = int.from_bytes(data[off:off + 8], "little" if little else "big")
        name = data[off + 8:off + MODVERSION_ENTRY].split(b"\0", 1)[0].decode(errors="replace")
        if name:
            out[name] = crc & 0xFFFFFFFF
    return out


def parse_symvers_crcs(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 4 and cols[0].startswith("0x"):
            out[cols[1]] = int(cols[0], 16)
    return out


def _modinfo_all(ko: Path) -> list[tuple[str, str]]:
    with ko.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(".modinfo")
        data = sec.data() if sec is not None else b""
    pairs = []
    for entry in data.split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


def require_elf_file(path: Path) -> None:
    """Refuse a path that is no ELF file at all (a wrong argument), before any kernel is
    provisioned; a damaged ELF file is for elf_report to judge."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    with path.open("rb") as f:
        if f.read(4) != b"\x7fELF":
            raise UsageError(f"{path}: not an ELF file (a .ko starts with \\x7fELF)")


def elf_report(ko: Path, want_vermagic: str, symvers_text: str) -> ElfReport:
    """Vermagic, exported and GPL-only symbols, modversion CRCs (`__versions` against
    Module.symvers), as kernel/module.c's check_modinfo(), resolve_symbol() and
    check_version() judge them."""
    r = ElfReport(str(ko), vermagic_expected=want_vermagic)
    try:
        info = read_module_info(ko)
    except SetupError as e:
        r.problems.append(str(e))
        return r
    except Exception as e:          # not an ELF file at all
        r.problems.append(f"{ko}: not a readable ELF module ({e})")
        return r
    r.name, r.license, r.vermagic = info.name, info.license, info.vermagic
    r.undefined = sorted(info.undefined)
    r.params = [v for k, v in _modinfo_all(ko) if k == "parmtype"]
    if info.vermagic != want_vermagic:
        r.problems.append(f"vermagic {info.vermagic!r} is not the kernel's {want_vermagic!r}")
    if not info.license:
        r.notes.append("no MODULE_LICENSE: the kernel treats it as proprietary and taints (P)")
    exports = parse_symvers(symvers_text)
    crcs = parse_symvers_crcs(symvers_text)
    gpl = info.license in GPL_COMPATIBLE
    for sym in r.undefined:
        export = exports.get(sym)
        if export is None:
            r.problems.append(f"symbol {sym} is not exported by the kernel")
        elif export.gpl_only:
            r.gpl_only_used.append(sym)
            if not gpl:
                r.problems.append(f"GPL-only symbol {sym} used by a module licensed {info.license!r}")
    versions = read_versions(ko)
    if not versions:
        r.notes.append("no __versions section (built without CONFIG_MODVERSIONS?)")
    for sym, crc in sorted(versions.items()):
        if sym not in crcs:
            if sym != "module_layout":
                r.notes.append(f"__versions names {sym}, which Module.symvers does not list")
            continue
        r.crcs_checked += 1
        if crcs[sym] != crc:
            r.problems.append(f"{sym}: CRC 0x{crc:08x} in __versions, the kernel's is "
                              f"0x{crcs[sym]:08x} (disagrees about symbol version)")
    missing = [s for s in r.undefined if s in crcs and s not in versions]
    if versions and missing:
        r.notes.append(f"{len(missing)} undefined symbol(s) without a CRC: {', '.join(missing[:5])}")
    return r
