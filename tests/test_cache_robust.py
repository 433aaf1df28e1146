"""A cache that cannot hand out the wrong thing: content-keyed builds, moved caches,
truncated kernels, stale temporary directories, full disks, replaced keys and images.

These use the real provisioned kernel and the real compiler; none boots a guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from buddylab import cachefs, errors
from buddylab.errors import SetupError
from buddylab.guest import image as guest_image
from buddylab.guest import workdir
from buddylab.kernel import bzimage, kbuild, provision
from buddylab.paths import cache_dir, kmod_dir


def _buddylab(*args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buddylab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _modinfo(ko: Path) -> bytes:
    return subprocess.run(["objcopy", "-O", "binary", "--only-section=.modinfo", str(ko),
                           "/dev/stdout"], capture_output=True, check=True).stdout


# ----------------------------------------------------- builds keyed by content

def test_two_source_dirs_never_get_each_others_build(kernel, tmp_path: Path, monkeypatch):
    """Two clones share a cache; the second one's module is modified."""
    monkeypatch.setenv("BUDDYLAB_CACHE", str(tmp_path / "cache"))
    clone_a, clone_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(kmod_dir(), clone_a)
    shutil.copytree(kmod_dir(), clone_b)
    with (clone_b / "buddylab.c").open("a") as f:
        f.write('MODULE_INFO(buddylab_clone, "b");\n')

    # What a build killed mid-way leaves: its private staging directory.
    dead = cachefs.private_dir(cache_dir() / "build" / "x")
    (dead / "buddylab.o").write_bytes(b"half")
    os.utime(dead, (0, 0))

    ko_a = kbuild.build_module(kernel, clone_a)
    assert not dead.exists()
    ko_b = kbuild.build_module(kernel, clone_b)
    assert ko_a.parent != ko_b.parent
    assert b"buddylab_clone=b" in _modinfo(ko_b)
    assert b"buddylab_clone" not in _modinfo(ko_a)
    # The first clone again: its own build, untouched by the second's.
    assert kbuild.build_module(kernel, clone_a) == ko_a
    assert b"buddylab_clone" not in _modinfo(ko_a)
    # Each build says what it was made from.
    manifest = json.loads((ko_b.parent / "build.json").read_text())
    assert manifest["inputs"]["compiler"].startswith("gcc")
    assert set(manifest["inputs"]) >= {"source buddylab.c", "headers Module.symvers", "release"}

    # A build changed after it was published is never handed out: it is rebuilt.
    ko_a.write_bytes(b"not a module")
    again = kbuild.build_module(kernel, clone_a)
    assert again == ko_a and ko_a.read_bytes()[:4] == b"\x7fELF"
    assert not [p for p in ko_a.parent.parent.iterdir() if p.name.startswith(".")]


def test_only_staging_older_than_the_deadline_is_removed(tmp_path: Path):
    old = cachefs.private_dir(tmp_path / "a")
    fresh = cachefs.private_dir(tmp_path / "b")
    done = tmp_path / "c"
    done.mkdir()
    for d in (old, done):
        os.utime(d, (0, 0))
    cachefs.remove_stale_staging(tmp_path, older_than=600)
    assert not old.exists() and fresh.exists() and done.exists()


def test_every_input_is_part_of_the_key(kernel, tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(kmod_dir(), src)
    base = kbuild.build_key(kbuild.build_inputs(kernel, src))
    (src / "buddylab.c").write_text((src / "buddylab.c").read_text() + "/* comment */\n")
    assert kbuild.build_key(kbuild.build_inputs(kernel, src)) != base
    inputs = kbuild.build_inputs(kernel, kmod_dir())
    for name in inputs:
        changed = {**inputs, name: inputs[name] + "x"}
        assert kbuild.build_key(changed) != base, name


# ------------------------------------------------------------ a moved cache

def test_a_copied_cache_builds_against_its_own_headers(recipe, kernel, tmp_path: Path, monkeypatch):
    """Copy the extracted kernel into another cache (hard links), build there."""
    if recipe.kind != "debian":
        pytest.skip(f"kernel recipe {recipe.name} is of kind {recipe.kind}: no extracted packages")
    pins = recipe
    old = provision.kernel_dir(pins)
    assert kernel.root == old / "root"
    new_cache = tmp_path / "moved-cache"
    (new_cache / "kernels").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(old), str(new_cache / "kernels" / old.name)], check=True)
    monkeypatch.setenv("BUDDYLAB_CACHE", str(new_cache))
    moved = provision.provision_kernel(pins)          # no download: the stamp is there
    assert moved.root == new_cache / "kernels" / old.name / "root"
    ko = kbuild.build_module(moved)
    cmd = (ko.parent / ".buddylab.o.cmd").read_text()
    assert str(moved.headers) in cmd or str(moved.root) in cmd
    assert str(old) not in cmd


# --------------------------------------------------------- truncated kernel

@pytest.mark.parametrize("share", [0.5, 0.9, None])
def test_truncated_kernel_image_is_refused(kernel, tmp_path: Path, share: float | None):
    data = kernel.vmlinuz.read_bytes()
    bzimage.check_bzimage(kernel.vmlinuz)
    need = bzimage.expected_size(data[: bzimage.HEADER_END])
    # Debian's signed 5.10 image holds its signature past the size the header
    # gives; the unsigned 6.1 image ends exactly there.
    assert need <= len(data)
    cut = tmp_path / "vmlinuz-cut"
    cut.write_bytes(data[: int(len(data) * share) if share else need - 1])
    with pytest.raises(SetupError, match="is truncated"):
        bzimage.check_bzimage(cut)


def test_truncated_kernel_image_exits_3(kernel, prepared, tmp_path: Path):
    cut = tmp_path / "vmlinuz-cut"
    cut.write_bytes(kernel.vmlinuz.read_bytes()[: kernel.vmlinuz.stat().st_size // 2])
    proc = _buddylab("run", "true", "--vmlinuz", str(cut))
    assert proc.returncode == errors.EXIT_SETUP, proc.stderr
    assert f"kernel image {cut} is truncated" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_a_bzimage_is_refused(tmp_path: Path):
    junk = tmp_path / "junk"
    junk.write_bytes(bytes(4096))
    with pytest.raises(SetupError, match="not a bzImage"):
        bzimage.check_bzimage(junk)


# --------------------------------------------- stale temporary directories

_HOLDER = """
import sys
from buddylab.guest.workdir import private_workdir
with private_workdir() as d:
    (d / "client_key").write_text("secret")
    print(d, flush=True)
    sys.stdin.read()
"""


def test_directory_of_a_killed_run_is_removed_by_the_next(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    left = Path(holder.stdout.readline().strip())
    assert (left / "client_key").is_file()
    # While its owner lives, the directory is kept.
    assert left not in workdir.remove_stale()
    holder.kill()                              # SIGKILL: no finally runs
    holder.wait()
    assert (left / "client_key").is_file()
    assert left in workdir.remove_stale()
    assert not left.exists()


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path: Path):
    d = tmp_path / f"{workdir.PREFIX}x"
    d.mkdir()
    (d / workdir.OWNER_FILE).write_text(f"{os.getpid()} 1\n")   # our pid, another start time
    assert workdir.remove_stale(tmp_path) == [d]
    mine = tmp_path / f"{workdir.PREFIX}y"
    mine.mkdir()
    (mine / workdir.OWNER_FILE).write_text(f"{os.getpid()} {workdir.process_start(os.getpid())}\n")
    assert workdir.remove_stale(tmp_path) == []


# ----------------------------------------------------------------- full disk

@contextlib.contextmanager
def _tiny_filesystem(path: Path, size: str = "5m") -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _complete_looking(cache: Path) -> list[Path]:
    """Anything in `cache` a later run would take as a finished artefact."""
    found = [*cache.glob("kernels/*/extracted.stamp"), *cache.glob("debs/*.deb"),
             *cache.glob("build/*/build.json"), *cache.glob("images/initramfs-*.cpio")]
    return found


def test_cold_run_on_a_tiny_cache_filesystem_exits_3_at_once(buddylab_main, tmp_path: Path):
    with _tiny_filesystem(tmp_path / "small") as small:
        start = time.monotonic()
        proc = buddylab_main("run", "true", env={"BUDDYLAB_CACHE": str(small)})
        took = time.monotonic() - start
        assert proc.returncode == errors.EXIT_SETUP, proc.stderr
        assert took < 60
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert str(small) in lines[0] and "needs about" in lines[0] and "MiB" in lines[0]
        assert "Traceback" not in proc.stderr
        assert _complete_looking(small) == []


def test_image_writer_meeting_a_full_disk_leaves_nothing(kernel, module_ko, tmp_path: Path,
                                                        monkeypatch):
    """The space check is bypassed, so the cpio writer itself meets ENOSPC."""
    with _tiny_filesystem(tmp_path / "small") as small:
        monkeypatch.setenv("BUDDYLAB_CACHE", str(small))
        monkeypatch.setattr(cachefs, "require_space", lambda *a: None)
        with pytest.raises(SetupError) as info:
            guest_image.build_image(kernel, module_ko)
        message = str(info.value)
        assert f"no space left in {small / 'images'}" in message and "needs about" in message
        assert "\n" not in message
        assert list((small / "images").iterdir()) == []


def test_image_is_refused_before_writing_when_space_is_short(kernel, module_ko, tmp_path: Path,
                                                             monkeypatch):
    with _tiny_filesystem(tmp_path / "small") as small:
        monkeypatch.setenv("BUDDYLAB_CACHE", str(small))
        with pytest.raises(SetupError, match=f"not enough space in {small / 'images'} for the "
                                             "guest image: needs about [0-9]+ MiB"):
            guest_image.build_image(kernel, module_ko)


def test_a_tool_past_its_deadline_is_stopped_with_its_children():
    # The deadline is short (the test waits it out); what counts is that both sleeps end:
    # communicate() returns only once every holder of the output pipes has exited.
    start = time.monotonic()
    with pytest.raises(SetupError, match=r"did not finish within 0\.2 s"):
        cachefs.run_tool(["sh", "-c", "sleep 30 & sleep 30"], "a test tool", 0.2)
    assert time.monotonic() - start < 10


# ------------------------------------------------- replaced keys and images

def test_a_replaced_host_key_or_image_is_never_reused(kernel, module_ko, tmp_path: Path,
                                                      monkeypatch):
    monkeypatch.setenv("BUDDYLAB_CACHE", str(tmp_path / "cache"))
    first = guest_image.build_image(kernel, module_ko)
    assert (cache_dir() / "hostkey").stat().st_mode & 0o777 == 0o700
    assert first.host_key.private.stat().st_mode & 0o777 == 0o600
    assert guest_image.build_image(kernel, module_ko).initramfs == first.initramfs

    # The image file replaced under its name: rebuilt, not booted.
    good = first.initramfs.read_bytes()
    first.initramfs.write_bytes(good[: len(good) // 2])
    again = guest_image.build_image(kernel, module_ko)
    assert again.initramfs.read_bytes() == good

    # The host key replaced: a new image carrying the new key, pinned by the client.
    first.host_key.private.unlink()
    second = guest_image.build_image(kernel, module_ko)
    assert second.host_key.public_b64 != first.host_key.public_b64
    assert second.initramfs != first.initramfs
    manifest = json.loads(second.initramfs.with_suffix(".json").read_text())
    assert manifest["host_key"] == f"{second.host_key.key_type} {second.host_key.public_b64}"


def test_results_on_a_full_disk_give_one_line_and_exit_3(buddylab_main, tmp_path: Path):
    """A write no stage checked for (the results) meets ENOSPC: still exit 3, no traceback."""
    capture = Path(__file__).parent / "fixtures" / "tracerun" / "small-1cpu"
    with _tiny_filesystem(tmp_path / "full", size="64k") as full:
        with contextlib.suppress(OSError), (full / "filler").open("wb", buffering=0) as f:
            while True:
                f.write(bytes(4096))
        proc = buddylab_main("trace-replay", "--from", str(capture),
                             env={"BUDDYLAB_RESULTS": str(full / "results")})
        assert proc.returncode == errors.EXIT_SETUP, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"buddylab: no space left in {full}"), lines
        assert "Traceback" not in proc.stderr


# ----------------------------------------------------- layouts of earlier versions

def _old_and_current_cache(cache: Path) -> tuple[list[Path], list[Path]]:
    """A cache with what the earlier layouts wrote beside what this one writes and other files."""
    def touch(p: Path, text: str = "") -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p
    old = [touch(cache / "build" / "5.10.0-46-cloud-amd64" / "buddylab.ko").parent,
           touch(cache / "kernels" / "debian-5.10-cloud" / "root" / "boot" / "vmlinuz").parents[2],
           touch(cache / "guest-tools" / "bl-write")]
    old += [touch(cache / "apt" / name) for name in ("sources.list", "preferences", "status")]
    for name in ("sources.list.d", "preferences.d", "state", "lists", "cache"):
        (cache / "apt" / name).mkdir(parents=True)
        old.append(cache / "apt" / name)
    kept = [touch(cache / "build" / "5.10.0-46-cloud-amd64-0123456789abcdef" / "buddylab.ko").parent,
            # A build directory with a manifest is this layout's, whatever its name.
            touch(cache / "build" / "5.10.0-99-cloud-amd64" / "build.json").parent,
            touch(cache / "kernels" / "debian-5.10-cloud-0123456789abcdef" / "root" / "x").parent.parent,
            touch(cache / "kernels" / "my-own-kernel" / "root" / "x").parent.parent,
            touch(cache / "apt" / "debian-5.10-cloud" / "sources.list").parent,
            touch(cache / "apt" / "debian-5.10-cloud.lock"),
            touch(cache / "guest-tools" / "bl-write-0123456789abcdef"),
            touch(cache / "build" / "notes.txt", "mine"),
            touch(cache / "hostkey" / "key")]
    for p in old + kept:
        os.utime(p, (0, 0))
    return old, kept


def test_old_cache_layouts_are_removed_by_their_known_names_only(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]):
    cache = tmp_path / "cache"
    old, kept = _old_and_current_cache(cache)
    recipes, tools = ["debian-5.10-cloud", "debian-6.1-cloud"], ["bl-write", "bl-resume"]
    assert sorted(cachefs.old_layout_entries(cache, recipes, tools)) == sorted(old)
    # An old entry something changed within the last hour is left for a later run.
    os.utime(old[0], None)
    removed = cachefs.remove_old_layouts(cache, recipes, tools)
    assert sorted(removed) == sorted(old[1:])
    assert old[0].exists() and not any(p.exists() for p in old[1:])
    assert all(p.exists() for p in kept)
    assert "removed 10 entries of an older cache layout" in capsys.readouterr().err
    # Done under the cache's layout lock, which it releases.
    with cachefs.locked(cache / "layout.lock", "test"):
        pass
    assert cachefs.remove_old_layouts(cache, recipes, tools) == []


def test_a_recipe_apt_directory_named_like_an_old_entry_is_kept(tmp_path: Path):
    cache = tmp_path / "cache"
    _old_and_current_cache(cache)
    (cache / "apt" / "state" / "sources.list").write_text("")      # a recipe named "state"
    assert cache / "apt" / "state" not in cachefs.old_layout_entries(cache, [], [])


def test_remembered_digest_follows_the_file(tmp_path, monkeypatch):
    import hashlib

    cache, f = tmp_path / "cache", tmp_path / "input"
    f.write_bytes(b"a" * 4096)
    # Just written: hashed, not remembered (its ctime may not tick before the next write).
    assert cachefs.file_sha256(cache, f) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert not (cache / "memo" / "sha256.json").exists()
    monkeypatch.setattr(cachefs, "RACY_SECONDS", -1.0)
    cachefs.file_sha256(cache, f)
    assert str(f.resolve()) in json.loads((cache / "memo" / "sha256.json").read_text())
    # Same size, same mtime, other bytes: the ctime tells.
    st = f.stat()
    while f.stat().st_ctime_ns == st.st_ctime_ns:      # until the filesystem's clock ticks
        f.write_bytes(b"b" * 4096)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cachefs.file_sha256(cache, f) == hashlib.sha256(b"b" * 4096).hexdigest()
