"""The source build's configuration check, on a real olddefconfig result."""

from pathlib import Path

from buddylab.kernel.source_build import check_fragment, format_checks, parse_config
from buddylab.paths import images_dir

CONFIG = Path(__file__).parent / "fixtures" / "source-5.10" / "olddefconfig.config"


def test_parse_config_reads_values_and_not_set():
    values = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n# a comment\n")
    assert values == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x y"'}


def test_every_fragment_option_survived_the_real_olddefconfig():
    checks = check_fragment((images_dir() / "source-5.10.config").read_text(), CONFIG.read_text())
    assert {c.option for c in checks} >= {"CONFIG_KASAN", "CONFIG_PAGE_OWNER", "CONFIG_DEBUG_FS",
                                          "CONFIG_SLUB_DEBUG", "CONFIG_IKCONFIG_PROC"}
    assert all(c.survived for c in checks), format_checks(checks)


def test_an_option_olddefconfig_dropped_is_reported_lost():
    # KASAN_SW_TAGS is arm64 only: olddefconfig drops it on x86.
    fragment = "CONFIG_KASAN=y\nCONFIG_KASAN_SW_TAGS=y\n# CONFIG_CMA is not set\n"
    checks = check_fragment(fragment, CONFIG.read_text())
    assert [(c.option, c.survived) for c in checks] == [
        ("CONFIG_KASAN", True), ("CONFIG_KASAN_SW_TAGS", False), ("CONFIG_CMA", True)]
    report = format_checks(checks)
    assert report.splitlines()[0] == "fragment options that survived olddefconfig: 2/3"
    assert "LOST CONFIG_KASAN_SW_TAGS=y (olddefconfig made it n)" in report
