"""LAVA: run an experiment on a lab's QEMU x86_64 device, read its results back.

`job_definition` writes a LAVA job (deploy the kernel and the initramfs from
URLs to tmpfs, boot QEMU, run the experiment through LAVA's test shell);
`device_config` writes the device configuration `lava-run` needs to run that
job on this machine without a LAVA server; `read_log` and `suite_from_log`
read the job's log (lava-run's output, or the server's `output.yaml`) back
into the experiment's suite.

In the guest there is no SSH: /init opens a root shell on the serial
console (`bl_console=shell`), LAVA appends its test-shell overlay to the
initramfs, and the test definition runs the experiment's own guest script
(the one a direct run sends over SSH) downfall.ATTEMPTS times, prints each
whole output between two markers with its line count and SHA256, and
reports the checks that need only the module's records as LAVA test cases
(`lava-test-case`, with the first attempt's figure as measurement; a case
passes only if every attempt's records pass it).  The checks that need the
model run on the host: `suite_from_log` analyses the captured outputs
exactly as a direct run does (downfall.decide: the first attempt that
background work did not disturb decides), and fails any check whose LAVA
test case says otherwise.  The guest runs every attempt, since only the
host's model can tell a disturbed one; a direct run stops at the deciding
one.  A failing test case does not fail a LAVA job, so the verdict comes
from the results, never from the job's status.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from buddylab import errors
from buddylab.experiments import downfall
from buddylab.experiments.base import KERNEL_LOG_PROBLEMS
from buddylab.report import Case, Measurement, Status, Suite

PROMPT = "buddylab# "                 # PS1 of /init's console shell (images/init.sh)
DEFINITION = "buddylab-downfall"       # the test definition's name
BEGIN, END = "BUDDYLAB-CAPTURE-BEGIN", "BUDDYLAB-CAPTURE-END"
OUT = "/tmp/buddylab-downfall.out"


def slug(name: str) -> str:
    """A check's name as a LAVA test case id (no spaces: LAVA splits its signals on them)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-")


def kernel_append(cmdline: str) -> str:
    """The direct run's kernel command line, for a console shell under LAVA.

    `panic=0`: LAVA's QEMU has no -no-reboot, so panic=-1 would reboot into a
    loop; the job's timeout ends a panicked guest instead.  Without `quiet`
    (loglevel=6), the kernel prints its banner, LAVA's kernel-start-message.
    """
    words = [w for w in cmdline.split() if w not in ("quiet",) and not w.startswith(("panic=", "bl_"))]
    return " ".join([*words, "panic=0", "loglevel=6", "bl_console=shell"])


def attempt_out(n: int | str) -> str:
    """Where the guest keeps attempt `n`'s output."""
    return f"{OUT}.{n}"


ATTEMPT_OUTS = " ".join(attempt_out(n) for n in range(1, downfall.ATTEMPTS + 1))


def _record_pages(api: str) -> str:
    """The pages the module's logs record for each attempt's first successful `alloc` with
    `api`, one line each."""
    return (f"$(for f in {ATTEMPT_OUTS}; do sed -n 's/^op seq=[0-9]* verb=alloc ret=0 .* "
            f"pages=\\([0-9]*\\) api={api} .*/\\1/p' $f | head -n 1; done)")


def guest_steps(expect: downfall.Expectations, recipe: str) -> list[str]:
    """The test definition's steps: the experiment, its output between markers, the record checks."""
    problems = " ".join(f"-e '{p}'" for p in KERNEL_LOG_PROBLEMS)
    last_part = ("awk '/^@@$/ { part = \"\" ; next } { part = part $0 \"\\n\" } "
                 "END { printf \"%s\", part }' $f")
    attempts = downfall.ATTEMPTS

    def case(name: str, test: str, measure: str, units: str) -> str:
        return (f"if {test}; then r=pass; else r=fail; fi; "
                f"lava-test-case {slug(name)} --result $r --measurement {measure} --units {units}")

    def every(values: str, want: object) -> str:
        """A test that each attempt's line of `values` is `want`."""
        return f'[ "$(echo "{values}" | grep -c -x {want})" = {attempts} ]'
    out = attempt_out("$a")
    return [
        # LAVA's run.sh has set -e and set -x: a check that finds a failure must not end the
        # script, and no trace line may land between the markers.  Kernel messages stay
        # off the console while the output is printed.
        "set +e +x",
        "dmesg -n 1",
        # stdout only, as over SSH; each attempt's status in its own file.
        f"for a in $(seq {attempts}); do ( {downfall.guest_script(expect)} ) > {out} "
        f"2> {out}.err; echo $? > {out}.rc; done",
        f"for a in $(seq {attempts}); do "
        f"echo \"{BEGIN} downfall attempt=$a recipe={recipe} kernel=$(uname -r)\"; cat {out}; "
        f"echo \"{END} downfall attempt=$a rc=$(cat {out}.rc) lines=$(wc -l < {out}) "
        f"sha256=$(sha256sum < {out} | cut -d ' ' -f 1)\"; done",
        f"rc=$(for f in {ATTEMPT_OUTS}; do cat $f.rc; done); "
        f"n=$(for f in {ATTEMPT_OUTS}; do grep -c '^op seq=[0-9]* verb=[a-z_]* ret=0 ' $f; done); "
        f"taken={_record_pages('alloc_pages')}; kept={_record_pages('alloc_pages_exact')}; "
        f"bad=$(for f in {ATTEMPT_OUTS}; do {last_part} | grep -c {problems}; done)",
        # The measurement: the first attempt's figure (0 if it has none).
        'first() { echo "${1:-0}"; }',
        case(expect.steps_check, f"{every('$rc', 0)} && {every('$n', len(downfall.STEPS))}",
             "$(first $n)", "steps"),
        case(expect.plain_check, every("$taken", expect.taken), "$(first $taken)", "pages"),
        case(expect.exact_check, every("$kept", expect.kept_exact), "$(first $kept)", "pages"),
        case(expect.log_check, every("$bad", 0), "$(first $bad)", "lines"),
    ]


def _sha256(url: str, path: Path) -> dict[str, str]:
    return {"url": url, "sha256sum": hashlib.sha256(path.read_bytes()).hexdigest()}


def job_definition(*, kernel: Path, initramfs: Path, kernel_url: str, initramfs_url: str,
                   cmdline: str, recipe: str, memory_mib: int, cpus: int,
                   expect: downfall.Expectations, device_type: str = "qemu") -> dict[str, object]:
    """A LAVA job: tmpfs deploy from URLs (SHA256 checked), QEMU boot, the test shell."""
    name = f"buddylab downfall on {recipe}" + (" (planted failure)" if expect.planted else "")
    return {
        "device_type": device_type,
        "job_name": name,
        "timeouts": {"job": {"minutes": 20}, "action": {"minutes": 10},
                     "connection": {"minutes": 2}},
        "priority": "medium",
        "visibility": "public",
        # Read by a lab's qemu device-type template; local runs take them from device_config.
        "context": {"arch": "x86_64", "memory": memory_mib, "cpus": cpus, "guestfs_interface": "virtio"},
        "metadata": {"buddylab.recipe": recipe, "buddylab.experiment": "downfall",
                     "buddylab.planted_failure": expect.planted},
        "actions": [
            {"deploy": {
                "to": "tmpfs", "timeout": {"minutes": 5},
                "images": {
                    "kernel": {"image_arg": f"-kernel {{kernel}} -append \"{kernel_append(cmdline)}\"",
                               **_sha256(kernel_url, kernel)},
                    # LAVA appends its test-shell overlay to the initramfs.
                    "ramdisk": {"image_arg": "-initrd {ramdisk}", **_sha256(initramfs_url, initramfs),
                                "format": "cpio.newc", "overlays": {"lava": True}},
                }}},
            {"boot": {"method": "qemu", "media": "tmpfs", "timeout": {"minutes": 5},
                      "prompts": [PROMPT]}},
            {"test": {"timeout": {"minutes": 10}, "definitions": [{
                "from": "inline", "name": DEFINITION, "path": f"inline/{DEFINITION}.yaml",
                "repository": {
                    "metadata": {"format": "Lava-Test Test Definition 1.0", "name": DEFINITION,
                                 "description": "buddylab: the downfall case on the real kernel"},
                    "run": {"steps": guest_steps(expect, recipe)}}}]}},
        ],
    }


def device_config(memory_mib: int, cpus: int) -> dict[str, object]:
    """A QEMU x86_64 device for `lava-run` on this machine (what a lab renders from its templates).

    KVM is left out (TCG): on machines like this one KVM guests hang.
    """
    return {
        "constants": {
            "kernel-start-message": "Linux version [0-9]",
            "default-shell-prompt": "lava-test: # ",
            "shutdown-message": "The system is going down for reboot NOW",
            "spawn_maxread": 4092,
            "failure_retry": 1,
            "boot_retry": 1,
            "posix": {"lava_test_sh_cmd": "/bin/sh", "lava_test_results_dir": "/lava-%s",
                      "lava_test_shell_file": "~/.profile"},
        },
        "parameters": {},
        "available_architectures": ["x86_64"],
        "actions": {
            # "image" is what accepts a tmpfs deploy for QEMU; its guest disk is never made
            # (the overlay goes into the initramfs), but its size must be given.
            "deploy": {"connections": {"serial": {}},
                       "methods": {"tmpfs": None, "image": {"parameters": {"guest": {"size": 512}}}}},
            "boot": {"connections": {"serial": {}}, "methods": {"qemu": {"parameters": {
                "command": "qemu-system-x86_64",
                "options": ["-nographic", "-accel tcg", "-cpu qemu64,+rdrand", f"-m {memory_mib}",
                            f"-smp {cpus}", "-nic none"]}}}},
        },
        "timeouts": {"actions": {}, "connections": {}},
    }


def dump_yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=10_000, default_flow_style=False)


# --- reading a job's log back ------------------------------------------------

@dataclass
class LavaLog:
    """What a LAVA job's log says: its test cases and what the guest printed."""

    cases: list[dict[str, object]] = field(default_factory=list)      # lvl: results
    target: list[str] = field(default_factory=list)                   # lvl: target

    @property
    def job(self) -> dict[str, object]:
        return next((c for c in self.cases if c.get("definition") == "lava" and c.get("case") == "job"),
                    {})

    def test_cases(self, definition_suffix: str) -> dict[str, dict[str, object]]:
        return {str(c["case"]): c for c in self.cases
                if str(c.get("definition", "")).endswith(definition_suffix)}


def _only_strings(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_strings(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_only_strings(v) for v in value)
    return isinstance(value, str)


def _json_entry(line: str) -> object | None:
    """The line read as JSON, where YAML reads it the same, else None (read it as YAML).

    lava-run writes most lines (the guest's output) as JSON with string values; JSON
    reads them several times faster than YAML.  Both read a line of printable ASCII
    without a backslash the same when every value is a string (YAML reads a bare
    1e5 as a string, JSON as a number; a `!` tag is no JSON)."""
    if "\\" in line or not (line.isascii() and line.isprintable()):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if _only_strings(entry) else None


def read_log(lines: Iterable[str]) -> LavaLog:
    """A job log: lava-run's output (one mapping a line) or a server's output.yaml (a list of them)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    log = LavaLog()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("- "):
            line = line[2:]
        if not line.startswith("{"):
            continue
        try:
            entry = _json_entry(line)
            if entry is None:
                entry = yaml.load(line, Loader=loader)
        except yaml.YAMLError as e:
            # PyYAML's message spans several lines; stderr gets one.
            problem = getattr(e, "problem", None) or " ".join(str(e).split())
            mark = getattr(e, "problem_mark", None)
            where = f" at column {mark.column + 1}" if mark is not None else ""
            raise errors.RecordError(f"LAVA log line {number} does not parse: {problem}{where}") from e
        if not isinstance(entry, dict):
            continue
        if entry.get("lvl") == "results" and isinstance(entry.get("msg"), dict):
            log.cases.append(entry["msg"])
        elif entry.get("lvl") == "target":
            log.target.append(str(entry.get("msg", "")))
    if not log.cases and not log.target:
        raise errors.RecordError("not a LAVA job log: no results and no target output in it")
    return log


def captures(log: LavaLog) -> list[tuple[str, dict[str, str]]]:
    """Each attempt's output between its markers, checked against its line count and SHA256,
    in the order printed (a log of a job that ran the case once holds one)."""
    begins = [i for i, line in enumerate(log.target) if line.startswith(f"{BEGIN} downfall ")]
    out = []
    for begin in begins:
        end = next((i for i in range(begin + 1, len(log.target))
                    if log.target[i].startswith((f"{END} downfall ", f"{BEGIN} downfall "))), None)
        if end is None or not log.target[end].startswith(END):
            break
        head = dict(w.split("=", 1) for w in log.target[begin].split()[2:] if "=" in w)
        tail = dict(w.split("=", 1) for w in log.target[end].split()[2:] if "=" in w)
        lines = log.target[begin + 1:end]
        text = "".join(line + "\n" for line in lines)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if str(len(lines)) != tail.get("lines") or digest != tail.get("sha256"):
            raise errors.RecordError(f"the buddylab output in the LAVA log is damaged: {len(lines)} "
                                     f"lines, the guest printed {tail.get('lines')} (SHA256 differs)")
        out.append((text, {**head, "rc": tail.get("rc", "")}))
    if not out or len(out) != len(begins):
        raise errors.RecordError("the LAVA log holds no complete buddylab output (did the job boot "
                                 f"and run its test shell?){_job_error(log)}")
    return out


def _job_error(log: LavaLog) -> str:
    job = log.job
    if job and job.get("result") != "pass":
        return f"; LAVA job {job.get('result')}: {job.get('error_msg', '')}"
    return ""


def report_from_log(log: LavaLog) -> downfall.Report:
    """The downfall report of a LAVA job's captured attempts, decided as a direct run's is."""
    return downfall.decide(downfall.analyse(text) for text, _ in captures(log))


def suite_from_log(log: LavaLog, report: downfall.Report | None = None) -> Suite:
    """The downfall suite of a LAVA job: the captured output analysed as a direct run's is
    (`report`, if already made by report_from_log), each check held against the LAVA test
    case the guest reported for it."""
    attempts = captures(log)
    head = attempts[0][1]
    if report is None:
        report = report_from_log(log)
    lava_cases = log.test_cases(DEFINITION)
    cases = []
    for c in report.cases:
        lava = lava_cases.get(slug(c.name))
        if lava is None:
            cases.append(c)
            continue
        said = Status.OK if lava.get("result") == "pass" else Status.FAIL
        ms = (*c.measurements, Measurement("LAVA measurement", str(lava.get("measurement", "")),
                                           str(lava.get("units", ""))))
        if said is c.status:
            cases.append(Case(c.name, c.status, c.reason, ms, c.details))
        else:
            cases.append(Case(c.name, Status.FAIL,
                              f"LAVA test case {slug(c.name)}: {lava.get('result')}; "
                              f"the records: {c.status.value}" + (f" ({c.reason})" if c.reason else ""),
                              ms, c.details))
    props = {"recipe": head.get("recipe", ""), "kernel": head.get("kernel", ""), "runner": "lava"}
    job = log.job
    direct = downfall.suite(report)
    figures = (Measurement("LAVA job", str(job.get("result", "unknown"))), *direct.measurements,
               Measurement("attempts printed", len(attempts)))
    return Suite("downfall", tuple(cases), props, figures, error=direct.error,
                 exit_code=direct.exit_code)
