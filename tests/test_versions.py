"""The model is chosen by the running kernel's version; other versions say what is not modelled."""

from buddylab.experiments.accuracy.kernels import KernelRow, format_kernels
from buddylab.experiments.accuracy.report import AccuracyRequest
from buddylab.experiments.accuracy.scoring import Accuracy, Tally
from buddylab.models.versions import series_of, support_for


def test_series_of_debian_and_source_releases():
    assert series_of("5.10.0-46-cloud-amd64") == "5.10"
    assert series_of("5.10.262") == "5.10"
    assert series_of("6.1.0-57-cloud-amd64") == "6.1"
    assert series_of("6.12") == "6.12"
    assert series_of("not-a-release") == ""


def test_5_10_and_6_1_are_modelled_6_12_says_what_is_not():
    from buddylab.models import pagemodel, pagemodel61
    from buddylab.models.kernel_state import ZONE_MODELS

    assert support_for("5.10.0-32-cloud-amd64").series == "5.10"
    six = support_for("6.1.0-57-cloud-amd64")
    assert six.modelled and six.series == "6.1"
    assert ZONE_MODELS[six.series] is pagemodel61.Zone61
    assert ZONE_MODELS["5.10"] is pagemodel.Zone
    s = support_for("6.12.48+deb13-cloud-amd64")
    assert not s.modelled and s.series not in ZONE_MODELS
    assert "no model of Linux 6.12" in s.not_modelled
    # What the report and result.json show of each: the release as given, its series.
    assert (six.release, six.series, six.modelled, six.not_modelled) == (
        "6.1.0-57-cloud-amd64", "6.1", True, "")
    assert (s.release, s.series, s.modelled) == ("6.12.48+deb13-cloud-amd64", "6.12", False)


def test_side_by_side_table_has_no_share_for_an_unmodelled_kernel():
    a = Accuracy()
    a.page = Tally(ops=500, attempted=500, exact=500)
    a.counts = Tally(ops=500, attempted=500, exact=156)
    a.textbook = Tally(ops=500, attempted=500, exact=65)
    b = Accuracy(series="6.1")
    b.page = Tally(ops=500, attempted=498, exact=497)
    other = support_for("6.12.48+deb13-cloud-amd64")
    rows = [KernelRow("debian-5.10-cloud", "5.10.0-46-cloud-amd64", a),
            KernelRow("debian-6.1-cloud", "6.1.0-57-cloud-amd64", b),
            KernelRow("debian-6.12-cloud", other.release, None, other.not_modelled)]
    table = format_kernels(rows, AccuracyRequest(1, 500, 250, False)).splitlines()
    assert table[4] == ("| debian-5.10-cloud | 5.10.0-46-cloud-amd64 | 5.10 model: 100.0% of "
                        "attempted (500/500; 500 operations) | 31.2% (156/500) | 13.0% (65/500) |")
    assert table[5].startswith("| debian-6.1-cloud | 6.1.0-57-cloud-amd64 | 6.1 model: 99.8% of "
                               "attempted (497/498; 500 operations) |")
    assert table[6].startswith("| debian-6.12-cloud | 6.12.48+deb13-cloud-amd64 | no model of")
    assert "%" not in table[6]


def test_a_5_10_kernel_configured_otherwise_is_not_modelled():
    from buddylab.models.versions import MODEL_LAYOUT, Layout

    assert support_for("5.10.262", MODEL_LAYOUT).modelled
    with_cma = Layout(("Unmovable", "Movable", "Reclaimable", "HighAtomic", "CMA", "Isolate"), 11, 9)
    s = support_for("5.10.262", with_cma)
    assert (s.release, s.series, s.modelled) == ("5.10.262", "5.10", False)
    assert "migratetypes Unmovable, Movable, Reclaimable, HighAtomic, CMA, Isolate" in s.not_modelled


def test_the_layout_of_a_real_pagetypeinfo_is_the_models():
    from pathlib import Path

    from buddylab.models.versions import MODEL_LAYOUT, Layout
    from buddylab.records.procfs import parse_pagetypeinfo

    proc = Path(__file__).parent / "fixtures" / "proc"
    texts = sorted(proc.glob("pagetypeinfo*"))
    assert texts
    info = parse_pagetypeinfo(texts[0].read_text())
    assert Layout(info.migratetypes, info.orders, info.pageblock_order) == MODEL_LAYOUT


def test_a_skipped_model_check_is_no_failure():
    from buddylab.experiments.downfall import Report
    from buddylab.report.model import Case

    report = Report(cases=[Case.check("a", True, ""), Case.skip("b", "not modelled")])
    assert report.passed
    assert not Report(cases=[Case.check("a", False, ""), Case.skip("b", "not modelled")]).passed
