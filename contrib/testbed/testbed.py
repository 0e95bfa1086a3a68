#!/usr/bin/env python3
"""Xen-in-QEMU testbed: build a Debian dom0 image, boot it, run commands inside dom0.

Stdlib only, so it runs before anything of the project is installed. Everything built is
cached under ``$XENTOOL_TESTBED_CACHE`` (default ``~/.cache/xentool-testbed``), keyed by a hash
of its recipe: changing a package list or a baked-in file rebuilds, nothing else does.

Two profiles of dom0. The default one boots with a shell script as PID 1 that starts
xenstored and xenconsoled itself and runs xentool from the shared checkout (PYTHONPATH).
`--production` boots the same Debian with systemd as PID 1, Debian's own Xen start-up
(xen.service, from xen-utils-common's /etc/init.d/xen) and xentool installed from the package
contrib/build-deb makes on the host, with apt, its units enabled: see PRODUCTION_PACKAGES and
contrib/testbed/dom0/production.sh.

Layout of the cache:
  dom0-<hash>/   xen, vmlinuz, initrd.img, rootfs.img, guest-modules/   (built by `build`;
                 one entry per profile)
  kits/<hash>/   the guest kit: vmlinuz, initrd.img, tiny.elf, tiny-wait.elf
  runs/<id>/     one booted testbed: spool/ (job exchange with dom0), serial.log, state.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
SUITE = "bookworm"
XEN_PKG = "xen-hypervisor-4.17-amd64"

# dom0 user space: Xen tools, the headers and compiler for the cffi extension, Python with the
# project's runtime and test dependencies, and what hotplug scripts and tests call.
DOM0_PACKAGES = (
    "xen-utils-4.17", "xen-utils-common", "xenstore-utils", "libxen-dev",
    "linux-image-amd64", "initramfs-tools", "kmod", "procps", "iproute2", "bridge-utils",
    "util-linux", "e2fsprogs", "tini", "busybox-static", "xz-utils", "zstd", "lz4", "bzip2",
    "python3", "python3-dev", "python3-pip", "python3-venv", "gcc", "libc6-dev",
    "python3-cffi", "python3-pyxs", "python3-pyparsing", "python3-pytest",
    "python3-pytest-timeout",
    "python3-hypothesis", "python3-zstandard", "python3-lz4",
)
# The production profile: the same dom0 plus what a Debian 12 dom0 run by systemd has, and
# what the xentool package and the README's install steps need.  dom0 has no network, so
# every package `apt install ./xentool_*.deb` wants must be in the image already: the
# package's own Depends are installed too (`apt-get satisfy`, see production_recipe), and
# contrib/build-deb's build dependencies (its `deps`), so that the README's first step works
# offline as it does on a dom0 with a mirror.
PRODUCTION_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "man-db", "bash-completion", "git",
)
# Maintenance timers a throw-away offline VM never needs, which would compete with the tests
# for the two emulated CPUs or hold the dpkg lock while the package is installed at boot.
PRODUCTION_MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
                     "e2scrub_all.timer", "fstrim.timer")
# Where the production dom0 mounts the job spool and the guest kit: not under /run/xentool,
# which is xentool's own runtime directory there (the units' RuntimeDirectory=).
PRODUCTION_SHARES = "/run/xentool-testbed"
DEV_SHARES = "/run/xentool"
# Front-end drivers the busybox guest loads (bookworm builds them as modules).
GUEST_MODULES = ("xen-blkfront", "xen-netfront")
ROOTFS_SIZE = "3G"
BOOT_TIMEOUT = 600.0
DEFAULT_JOB_TIMEOUT = 20 * 60.0
# The agent rewrites spool/beat every 2 s from a thread of its own; this long without a beat
# means dom0 (or the share) is wedged, which no job timeout would ever end sooner.
DOM0_SILENT_AFTER = 300.0
SWITCH_CONSOLE_INPUT = b"\x01\x01\x01"  # Ctrl-A three times, as Xen's banner says
DEBUG_KEY_QUIET = 5.0  # seconds of silence that end one key's dump
DEBUG_KEY_MAX_WAIT = 60.0
MEMORY_MIB = 6144
# With "-cpu max" (QEMU 7.2 emulates AVX under TCG) dom0 processes died at random as soon as
# guests ran beside them: corrupted malloc state, segfaults in ld.so and libc, 4 of 8
# parallel creates. That points at the extended (XSAVE) register state across Xen's context
# switches. Without XSAVE, Xen and Linux use FXSAVE and glibc its SSE code: 3 rounds of 8
# parallel creates/destroys of running guests, no crash.
TCG_CPU = "max,-xsave"


class TestbedError(Exception):
    """A failure with a one-line explanation for the operator."""


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    root = os.environ.get("XENTOOL_TESTBED_CACHE") or "~/.cache/xentool-testbed"
    return Path(root).expanduser()


def sh(*argv: str | os.PathLike, quiet: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a build step; on failure raise with the tail of its output."""
    r = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE if quiet else None,
                       stderr=subprocess.STDOUT if quiet else None, text=True, **kw)
    if r.returncode != 0:
        tail = "\n".join((r.stdout or "").splitlines()[-15:])
        raise TestbedError(f"{Path(str(argv[0])).name} failed (exit {r.returncode})"
                           + (f":\n{tail}" if tail else ""))
    return r


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def debian_mirror(apt_dir: Path = Path("/etc/apt"), archive: str = "debian") -> str:
    """The Debian mirror apt on this machine already uses (the only one we may reach), of
    `archive`: "debian" or "debian-security"."""
    a = re.escape(archive)
    for f in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            text = f.read_text()
            m = re.search(rf"^\s*URIs:\s*(\S+/{a})/?\s*$", text, re.M) or \
                re.search(rf"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+/{a})/?\s+\S+", text, re.M)
            if m:
                return m.group(1)
    return f"http://deb.debian.org/{archive}"


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise TestbedError(f"{what} needs root (debootstrap, chroot and 9p exports run as root)")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise TestbedError("missing host tools: " + ", ".join(missing)
                           + " (run contrib/install-deps)")


@contextlib.contextmanager
def build_lock():
    """Serialise builds: two runs started together must not both debootstrap."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def staging(final: Path):
    """Build into a temporary sibling and rename into place only when complete, so a full disk
    or an interrupted build never leaves a half-made entry in the cache."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------- dom0 image

@dataclass(frozen=True)
class Dom0Image:
    path: Path
    production: bool = False

    @property
    def key(self) -> str:
        return self.path.name.removeprefix("dom0-")

    xen = property(lambda self: self.path / "xen")
    kernel = property(lambda self: self.path / "vmlinuz")
    initrd = property(lambda self: self.path / "initrd.img")
    rootfs = property(lambda self: self.path / "rootfs.img")
    modules = property(lambda self: self.path / "guest-modules")


def dom0_recipe() -> str:
    return digest(SUITE, XEN_PKG, DOM0_PACKAGES, GUEST_MODULES, ROOTFS_SIZE,
                  (HERE / "dom0" / "xentool-init").read_bytes(), Path(__file__).read_bytes()
                  if os.environ.get("XENTOOL_TESTBED_HASH_SELF") else b"v1")


# Files baked into the production image (the set-up itself, production.sh, is read from the
# checkout at boot, so changing it never rebuilds the image).
PRODUCTION_FILES = {
    "usr/local/sbin/xentool-testbed-setup": "xentool-testbed-setup",
    "etc/systemd/system/xentool-testbed-setup.service": "xentool-testbed-setup.service",
    "etc/systemd/system/xentool-testbed-agent.service": "xentool-testbed-agent.service",
}


def production_recipe(depends: str) -> str:
    """The dev recipe plus the production packages, the xentool package's Depends (so the
    image is rebuilt when they change, e.g. a newer libxen on the build host) and the files
    baked in."""
    return digest(dom0_recipe(), "production", PRODUCTION_PACKAGES, build_deb_deps(),
                  depends, PRODUCTION_MASKED,
                  [(dst, (HERE / "dom0" / src).read_bytes().hex())
                   for dst, src in sorted(PRODUCTION_FILES.items())])


def build_deb_deps(script: Path = CHECKOUT / "contrib" / "build-deb") -> tuple[str, ...]:
    """The build dependencies contrib/build-deb checks for (its `deps="..."`)."""
    m = re.search(r'^deps="([^"]*)"', script.read_text(), re.M)
    if not m:
        raise TestbedError(f"no deps=\"...\" list in {script}")
    return tuple(m.group(1).split())


def build_dom0(force: bool = False, depends: str | None = None) -> Dom0Image:
    """The dev image, or with `depends` (the xentool package's Depends field) the production
    one."""
    if depends is None:
        image = Dom0Image(cache_root() / f"dom0-{dom0_recipe()}")
    else:
        image = Dom0Image(cache_root() / f"dom0-{production_recipe(depends)}", production=True)
    if image.rootfs.exists() and not force:
        return image
    with build_lock():
        if image.rootfs.exists() and not force:
            return image  # built by a concurrent run while we waited
        return _build_dom0(image, force, depends or "")


def _build_dom0(image: Dom0Image, force: bool, depends: str) -> Dom0Image:
    require_root("building the dom0 image")
    require_tools("debootstrap", "mkfs.ext4", "depmod", "dpkg", "apt-get")
    if force and image.path.exists():
        shutil.rmtree(image.path)
    started = time.monotonic()
    mirror = debian_mirror()
    what = "production dom0 image" if image.production else "dom0 image"
    log(f"building {what} {image.key} from {SUITE} at {mirror} (once; cached)")
    with staging(image.path) as out:
        root = out / "root"
        sh("debootstrap", "--variant=minbase", SUITE, root, mirror)
        log(f"  debootstrap done in {time.monotonic() - started:.0f}s")
        if image.production:
            # As on an installed Debian 12: with its updates and security archives.  The
            # package built on this host links the libxen of those, not of the release.
            (root / "etc/apt/sources.list").write_text(
                f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n"
                f"deb {debian_mirror(archive='debian-security')} {SUITE}-security main\n")
            _chroot_install(root, DOM0_PACKAGES + PRODUCTION_PACKAGES + build_deb_deps(),
                            update=True, satisfy=depends)
        else:
            _chroot_install(root, DOM0_PACKAGES)
        log(f"  packages installed in {time.monotonic() - started:.0f}s")
        _configure_rootfs(root, image.production)
        if image.production:
            _configure_production(root)
        _extract_boot_files(root, out)
        _fetch_hypervisor(out)
        shutil.rmtree(root / "boot", ignore_errors=True)
        sh("mkfs.ext4", "-q", "-F", "-L", "dom0", "-d", root, out / "rootfs.img", ROOTFS_SIZE)
        shutil.rmtree(root)
    log(f"dom0 image built in {time.monotonic() - started:.0f}s")
    return image


def _chroot_install(root: Path, packages: tuple[str, ...], update: bool = False,
                    satisfy: str = "") -> None:
    # No daemon may start inside the build chroot.
    rc_d = root / "usr/sbin/policy-rc.d"
    rc_d.write_text("#!/bin/sh\nexit 101\n")
    rc_d.chmod(0o755)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    mounts = [("proc", root / "proc", ["-t", "proc", "proc"]),
              ("sys", root / "sys", ["-t", "sysfs", "sysfs"]),
              ("dev", root / "dev", ["--bind", "/dev"])]
    done: list[Path] = []
    try:
        for _, target, args in mounts:
            sh("mount", *args, target)
            done.append(target)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "LC_ALL": "C"}
        # No fsync per unpacked file: an interrupted build is thrown away anyway (staging).
        fast = ("-o", "DPkg::Options::=--force-unsafe-io")
        if update:
            sh("chroot", root, "apt-get", "update", "-q", env=env)
            sh("chroot", root, "apt-get", "dist-upgrade", "-y", "-q", *fast, env=env)
        sh("chroot", root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *fast,
           *packages, env=env)
        if satisfy:
            sh("chroot", root, "apt-get", "satisfy", "-y", "-q", "--no-install-recommends", *fast,
               satisfy, env=env)
        sh("chroot", root, "apt-get", "clean", env=env)
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", str(target)], check=False)
    rc_d.unlink()


def _configure_rootfs(root: Path, production: bool = False) -> None:
    (root / "etc/hostname").write_text("xentool-dom0\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
    (root / "etc/resolv.conf").write_text("")
    # Default xl settings; xl wants the file even if empty.
    (root / "etc/xen").mkdir(exist_ok=True)
    (root / "etc/xen/xl.conf").touch()
    if production:
        return  # systemd is PID 1, and xentool comes from its package
    init = root / "sbin/xentool-init"
    shutil.copy(HERE / "dom0" / "xentool-init", init)
    init.chmod(0o755)
    # A `xentool` command in dom0 that runs the checkout of the host.
    wrapper = root / "usr/local/bin/xentool"
    wrapper.write_text('#!/bin/sh\nexec python3 -m xentool "$@"\n')
    wrapper.chmod(0o755)


def _configure_production(root: Path) -> None:
    """systemd boots it: the testbed's set-up and job agent are units of their own."""
    for dst, src in PRODUCTION_FILES.items():
        shutil.copy(HERE / "dom0" / src, root / dst)
        (root / dst).chmod(0o755 if "/sbin/" in dst else 0o644)
    units = root / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "xentool-testbed-setup.service").symlink_to("../xentool-testbed-setup.service")
    for timer in PRODUCTION_MASKED:
        (units / timer).unlink(missing_ok=True)
        (units / timer).symlink_to("/dev/null")
    # An empty machine-id means a first boot, where systemd applies the presets to every
    # unit; a real dom0 has booted before.
    machine_id = root / "etc/machine-id"
    if not machine_id.exists() or not machine_id.read_text().strip():
        machine_id.write_text(hashlib.sha256(b"xentool-testbed").hexdigest()[:32] + "\n")


def _extract_boot_files(root: Path, out: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise TestbedError("no kernel installed in the dom0 root file system")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copy(kernels[-1], out / "vmlinuz")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise TestbedError(f"initramfs-tools made no {initrd.name}")
    shutil.copy(initrd, out / "initrd.img")
    moddir = root / "lib/modules" / version
    dest = out / "guest-modules"
    dest.mkdir()
    deps = _module_deps(moddir)
    for name in GUEST_MODULES:
        for rel in deps[name]:
            shutil.copy(moddir / rel, dest / Path(rel).name)
    (dest / "load-order").write_text(
        "\n".join(Path(rel).name for name in GUEST_MODULES for rel in deps[name]) + "\n")
    (out / "kernel-version").write_text(version + "\n")


def _module_deps(moddir: Path) -> dict[str, list[str]]:
    """Module name -> its file and its dependencies' files, dependencies first."""
    table: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("_", "-")
        table[name] = [*reversed(deps.split()), path]
    missing = [m for m in GUEST_MODULES if m not in table]
    if missing:
        raise TestbedError(f"kernel lacks guest modules: {', '.join(missing)}")
    return table


def _fetch_hypervisor(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sh("apt-get", "download", XEN_PKG, cwd=tmp)
        deb = next(Path(tmp).glob("*.deb"))
        sh("dpkg", "-x", deb, Path(tmp) / "x")
        gz = next((Path(tmp) / "x/boot").glob("xen-*.gz"))
        with open(out / "xen", "wb") as f:
            subprocess.run(["zcat", str(gz)], stdout=f, check=True)


# ---------------------------------------------------------------------------- xentool package

@dataclass(frozen=True)
class Package:
    path: Path

    @property
    def depends(self) -> str:
        return sh("dpkg-deb", "-f", self.path, "Depends").stdout.strip()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def ensure_package(outdir: Path = CHECKOUT / "dist") -> Package:
    """The .deb of the checkout's HEAD that contrib/build-deb leaves in `outdir` (which dom0
    sees over the checkout's share), built now if it is missing or stale."""
    require_tools("git", "dpkg-deb")
    started = time.monotonic()
    r = sh(CHECKOUT / "contrib" / "build-deb", outdir)
    last = (r.stdout or "").strip().splitlines()[-1:] or [""]
    debs = sorted(outdir.glob("xentool_*.deb"))
    if len(debs) != 1:
        raise TestbedError(f"contrib/build-deb left {len(debs)} packages in {outdir}: {last[0]}")
    state = "up to date" if "up to date" in last[0] else \
        f"built in {time.monotonic() - started:.0f}s"
    log(f"package {debs[0].name} ({state})")
    return Package(debs[0])


# ---------------------------------------------------------------------------------- guest kit

def kit_recipe(image: Dom0Image) -> str:
    files = sorted((HERE / "guest").glob("*"))
    return digest(image.key, [(f.name, f.read_bytes().hex()) for f in files if f.is_file()])


def build_kit(image: Dom0Image) -> Path:
    kit = cache_root() / "kits" / kit_recipe(image)
    if (kit / "initrd.img").exists():
        return kit
    with build_lock():
        if not (kit / "initrd.img").exists():
            _build_kit(image, kit)
    return kit


def _build_kit(image: Dom0Image, kit: Path) -> None:
    require_tools("busybox", "cpio", "grub-mkimage")
    busybox = Path("/bin/busybox")  # busybox-static: the guest initrd has no libc
    with staging(kit) as out:
        _build_guest_initrd(image, busybox, out / "initrd.img")
        shutil.copy(image.kernel, out / "vmlinuz")
        for name, cfg in (("tiny.elf", "tiny.cfg"), ("tiny-wait.elf", "tiny-wait.cfg")):
            sh("grub-mkimage", "-O", "x86_64-xen", "-d", "/usr/lib/grub/x86_64-xen",
               "-p", "/boot/grub", "-c", HERE / "guest" / cfg, "-o", out / name,
               "echo", "sleep", "halt", "configfile", "normal", "test")
    log(f"guest kit {kit.name} built")


def _build_guest_initrd(image: Dom0Image, busybox: Path, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy(busybox, root / "bin/busybox")
        shutil.copy(HERE / "guest" / "init", root / "init")
        (root / "init").chmod(0o755)
        for f in image.modules.iterdir():
            shutil.copy(f, root / "lib/modules" / f.name)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        with open(dest, "wb") as f:
            cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            gz = subprocess.Popen(["gzip", "-9n"], stdin=cpio.stdout, stdout=f)
            assert cpio.stdin and cpio.stdout
            cpio.stdout.close()
            cpio.stdin.write(("\n".join(files) + "\n").encode())
            cpio.stdin.close()
            if cpio.wait() or gz.wait():
                raise TestbedError("cpio/gzip failed building the guest initrd")


# --------------------------------------------------------------------------------------- boot

def check_accel(accel: str) -> None:
    if accel == "tcg":
        return
    if accel != "kvm":
        raise TestbedError(f"unknown accelerator '{accel}' (tcg or kvm)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise TestbedError("--accel kvm: /dev/kvm is missing or not accessible; use --accel tcg")
    flags = Path("/proc/cpuinfo").read_text()
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M):
        # Measured: such a KVM (no VMX/SVM exposed) cannot run Xen; it dies on the first
        # shadow-stack probe and PV dom0 syscalls fault.
        raise TestbedError("--accel kvm: this host's CPU exposes neither VMX nor SVM, so KVM "
                           "here cannot run the Xen hypervisor; use --accel tcg")


@dataclass
class Testbed:
    run_dir: Path
    pid: int
    owned: bool  # torn down by us when the command ends (not --keep)

    @property
    def spool(self) -> Path:
        return self.run_dir / "spool"

    @property
    def serial(self) -> Path:
        return self.run_dir / "serial.log"

    def xen_debug_keys(self, keys: str = "qrd") -> str:
        """What Xen prints for `keys` on its console (q: domains and vCPUs, r: run queues,
        d: registers and stacks of every pCPU); empty if Xen no longer answers."""
        answer = bytearray()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(DEBUG_KEY_QUIET)
                sock.connect(str(self.run_dir / "serial.sock"))
                sock.sendall(SWITCH_CONSOLE_INPUT)  # from dom0's console to Xen's key handler
                for key in keys:
                    time.sleep(0.5)
                    sock.sendall(key.encode())
                    # QEMU paces the UART by this connection: unread, Xen's dump stalls.
                    answer += _read_until_quiet(sock, DEBUG_KEY_MAX_WAIT)
                sock.sendall(SWITCH_CONSOLE_INPUT)  # back to dom0
        except OSError as exc:
            return f"(cannot reach the serial console: {exc})\n"
        return answer.decode(errors="replace").replace("\r\n", "\n")

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # A zombie or a recycled pid is not our QEMU.
        try:
            cmd = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.run_dir).encode() in cmd

    def stop(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(50):
                if not self.alive():
                    break
                time.sleep(0.1)
            else:
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def multiboot_modules(*modules: str) -> str:
    """QEMU's -initrd value for multiboot modules: ',' separates them, ',,' is a comma."""
    return ",".join(m.replace(",", ",,") for m in modules)


def _set_pdeathsig() -> None:
    # A QEMU we own dies with us even on SIGKILL: no orphaned VM eating the CI's cores.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def tcg_cpu() -> str:
    """The CPU model under TCG (``XENTOOL_TESTBED_CPU`` overrides it)."""
    return os.environ.get("XENTOOL_TESTBED_CPU") or TCG_CPU


def dom0_cmdline(image: Dom0Image) -> str:
    """dom0's kernel command line: the dev image runs the checkout's init.sh as PID 1 (via
    the stub baked in), the production one Debian's /sbin/init, systemd."""
    init = "" if image.production else " init=/sbin/xentool-init"
    return f"root=/dev/vda rw console=hvc0 earlyprintk=xen{init} xentool.src={CHECKOUT}"


def boot(image: Dom0Image, accel: str, keep: bool, package: Package | None = None) -> Testbed:
    require_tools("qemu-system-x86_64")
    check_accel(accel)
    runs = cache_root() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="tb-", dir=runs))
    spool = run_dir / "spool"
    spool.mkdir()
    kits = cache_root() / "kits"
    kits.mkdir(exist_ok=True)
    xen_args = ("dom0_mem=1024M,max:1024M dom0_max_vcpus=2 console=com1 com1=115200,8n1 "
                "loglvl=all guest_loglvl=all")
    if accel == "tcg":
        xen_args += " smap=0 smep=0"  # TCG: dom0 dies in create_bounce_frame without these
    modules = multiboot_modules(f"{image.kernel} {dom0_cmdline(image)}", str(image.initrd))
    argv = [
        "qemu-system-x86_64", "-name", "xentool-testbed,debug-threads=on",
        "-accel", accel, "-cpu", tcg_cpu() if accel == "tcg" else "host",
        "-m", str(MEMORY_MIB), "-smp", "2", "-no-reboot",
        "-display", "none", "-monitor", "none", "-nic", "none",
        # A socket (nobody attached, everything logged) so that a wedged run can ask Xen for
        # its state with debug keys; see Testbed.xen_debug_keys.
        "-chardev", f"socket,id=com1,path={run_dir / 'serial.sock'},server=on,wait=off,"
                    f"logfile={run_dir / 'serial.log'}",
        "-serial", "chardev:com1",
        "-kernel", str(image.xen), "-append", xen_args, "-initrd", modules,
        "-drive", f"file={image.rootfs},if=virtio,format=raw,snapshot=on",
        "-virtfs", f"local,path={CHECKOUT},mount_tag=src,security_model=none",
        "-virtfs", f"local,path={spool},mount_tag=spool,security_model=none",
        "-virtfs", f"local,path={kits},mount_tag=kit,security_model=none,readonly=on",
    ]
    profile = "production dom0 (systemd, xentool from its package)" if image.production \
        else "dom0"
    log(f"booting Xen + {profile} under QEMU ({accel.upper()}"
        f"{', kept running' if keep else ''})")
    started = time.monotonic()
    with open(run_dir / "qemu.log", "wb") as qlog:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                start_new_session=keep,
                                preexec_fn=None if keep else _set_pdeathsig)
    tb = Testbed(run_dir, proc.pid, owned=not keep)
    (run_dir / "state.json").write_text(json.dumps(
        {"pid": proc.pid, "image": image.key, "checkout": str(CHECKOUT), "accel": accel,
         "keep": keep, "package": package.digest if package else None}))
    try:
        _wait_ready(tb, proc)
    except BaseException:
        tb.stop()
        raise
    log(f"dom0 ready in {time.monotonic() - started:.1f}s")
    return tb


def _wait_ready(tb: Testbed, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while not (tb.spool / "ready").exists():
        if proc.poll() is not None:
            raise TestbedError(f"QEMU exited with {proc.returncode} during boot:\n"
                               + _tail(tb.run_dir / "qemu.log") + _tail(tb.serial))
        serial = tb.serial.read_text(errors="replace") if tb.serial.exists() else ""
        fatal = re.search(r"XENTOOL-TESTBED-FATAL: .*|Panic on CPU.*|Kernel panic.*", serial)
        if fatal:
            raise TestbedError(f"dom0 failed to boot: {fatal.group(0).strip()}\n"
                               + _tail(tb.serial))
        if time.monotonic() > deadline:
            raise TestbedError(f"dom0 not ready after {BOOT_TIMEOUT:.0f}s:\n" + _tail(tb.serial))
        time.sleep(0.2)


def _read_until_quiet(sock: socket.socket, limit: float) -> bytes:
    """What `sock` yields until it is silent for its timeout (at most `limit` seconds)."""
    data = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"--- last lines of {path.name} ---\n" + "\n".join(text) + "\n"


def find_kept(image: Dom0Image, package: Package | None = None) -> Testbed | None:
    """A testbed left running by `--keep` for this checkout and image (and for the production
    profile, with this xentool package installed), if any; one still booting is waited for
    rather than booting a second VM on the same cores."""
    runs = cache_root() / "runs"
    for state_file in sorted(runs.glob("tb-*/state.json")) if runs.exists() else ():
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads(state_file.read_text())
            tb = Testbed(state_file.parent, state["pid"], owned=False)
            if not tb.alive():
                shutil.rmtree(tb.run_dir, ignore_errors=True)
                continue
            if not (state.get("keep") and state["image"] == image.key
                    and state["checkout"] == str(CHECKOUT)
                    and state.get("package") == (package.digest if package else None)):
                continue
            deadline = time.monotonic() + BOOT_TIMEOUT
            while tb.alive() and not (tb.spool / "ready").exists() \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            if (tb.spool / "ready").exists():
                return tb
    return None


def running_testbeds() -> list[Testbed]:
    runs = cache_root() / "runs"
    alive = []
    for state_file in sorted(runs.glob("tb-*/state.json")) if runs.exists() else ():
        with contextlib.suppress(OSError, ValueError, KeyError):
            tb = Testbed(state_file.parent, json.loads(state_file.read_text())["pid"],
                         owned=False)
            if tb.alive():
                alive.append(tb)
    return alive


@contextlib.contextmanager
def boot_lock():
    """One boot at a time: concurrent runs wait, then reuse a kept VM instead of racing."""
    runs = cache_root() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / ".boot.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------- jobs

def run_job(tb: Testbed, argv: list[str], cwd: Path, env: dict[str, str],
            timeout: float) -> int:
    job_id = f"{time.time_ns():020d}-{os.getpid()}"
    job = {"argv": argv, "cwd": str(cwd), "env": env}
    for sub in ("jobs", "out", "done", "cancel", "alive"):
        (tb.spool / sub).mkdir(exist_ok=True)
    alive = tb.spool / "alive" / job_id
    alive.touch()
    last_touch = time.monotonic()
    tmp = tb.spool / f"{job_id}.tmp"
    tmp.write_text(json.dumps(job))
    os.rename(tmp, tb.spool / "jobs" / f"{job_id}.json")
    outs = [(tb.spool / "out" / f"{job_id}.stdout", sys.stdout.buffer),
            (tb.spool / "out" / f"{job_id}.stderr", sys.stderr.buffer)]
    rc_file = tb.spool / "done" / f"{job_id}.rc"
    handles: dict[Path, object] = {}
    deadline = time.monotonic() + timeout
    last_beat, last_beat_at = _read(tb.spool / "beat"), time.monotonic()
    # A queued job may wait for others, but not forever (a wedged agent must not hang CI).
    queue_deadline = time.monotonic() + timeout + 3600
    try:
        while True:
            finished = rc_file.exists()
            for path, sink in outs:
                f = handles.get(path)
                if f is None and path.exists():
                    f = handles[path] = open(path, "rb")  # noqa: SIM115 - closed with handles
                    # The timeout is for the command, not for its wait in the job queue.
                    deadline = time.monotonic() + timeout
                if f is not None:
                    data = f.read()
                    if data:
                        sink.write(data)
                        sink.flush()
            if finished:
                return int(rc_file.read_text().strip() or "125")
            if not tb.alive():
                log("the testbed VM died while running the command")
                sys.stderr.write(_tail(tb.serial))
                return 125
            now = time.monotonic()
            if now - last_touch > 1.0:
                alive.touch()  # the agent kills jobs nobody waits for any more
                last_touch = now
            beat = _read(tb.spool / "beat")
            if beat != last_beat:
                last_beat, last_beat_at = beat, now
            # No beat at all: an agent from before the heartbeat (a kept VM); not a sign.
            silent = last_beat is not None and now - last_beat_at > DOM0_SILENT_AFTER
            if (handles and now > deadline) or now > queue_deadline or silent:
                (tb.spool / "cancel" / job_id).touch()
                if silent:
                    log(f"dom0 has given no sign of life for {now - last_beat_at:.0f}s "
                        f"(frozen?); '{' '.join(argv)}' abandoned")
                else:
                    log(f"timeout: '{' '.join(argv)}' still running after {timeout:.0f}s; "
                        "killed")
                log("last lines of the Xen/dom0 serial console:")
                sys.stderr.write(_tail(tb.serial))
                log("Xen's view (debug keys q, r, d):")
                sys.stderr.write(tb.xen_debug_keys() or "(no answer from Xen)\n")
                return 124
            time.sleep(0.05)
    except KeyboardInterrupt:
        (tb.spool / "cancel" / job_id).touch()
        raise
    finally:
        for f in handles.values():
            f.close()  # type: ignore[attr-defined]
        for path in (*(p for p, _ in outs), rc_file, alive):
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- cli

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="contrib/testbed/run",
        description="Run a command as root inside a Xen 4.17 dom0 booted under QEMU.",
        epilog="example: contrib/testbed/run -- xl info; "
               "contrib/testbed/run --production -- systemctl status xentoold")
    p.add_argument("--keep", action="store_true",
                   help="leave the VM running afterwards; later runs reuse it")
    p.add_argument("--stop", action="store_true", help="stop a kept VM and exit")
    p.add_argument("--build-only", action="store_true",
                   help="build (or verify) the cached images and exit")
    p.add_argument("--rebuild", action="store_true", help="rebuild the dom0 image")
    p.add_argument("--production", action="store_true",
                   help="boot dom0 as a production Debian dom0: systemd as PID 1, Debian's "
                        "xen.service, xentool installed with apt from the package "
                        "contrib/build-deb makes of HEAD (built first if missing or stale), "
                        "xentoold enabled")
    p.add_argument("--accel", default=os.environ.get("XENTOOL_TESTBED_ACCEL", "tcg"),
                   help="tcg (default; works everywhere) or kvm (hosts with VMX/SVM)")
    p.add_argument("--timeout", type=float, default=DEFAULT_JOB_TIMEOUT,
                   help="seconds before the command is killed (default 1200)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the command")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    ns = p.parse_args(argv)
    cmd = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    try:
        env = dict(kv.split("=", 1) for kv in ns.env)
    except ValueError:
        p.error("--env takes KEY=VALUE")
    try:
        if ns.stop:
            stopped = 0
            for state in (cache_root() / "runs").glob("tb-*/state.json"):
                Testbed(state.parent, json.loads(state.read_text())["pid"], owned=True).stop()
                stopped += 1
            log(f"stopped {stopped} testbed(s)")
            return 0
        t0 = time.monotonic()
        package = ensure_package() if ns.production else None
        image = build_dom0(force=ns.rebuild, depends=package.depends if package else None)
        kit = build_kit(image)
        if ns.build_only:
            log(f"images ready in {time.monotonic() - t0:.0f}s: {image.path}, {kit}")
            return 0
        if not cmd:
            p.error("no command given (contrib/testbed/run -- CMD ARGS...)")
        with boot_lock():
            tb = find_kept(image, package)
            if tb is not None:
                log(f"reusing the running testbed {tb.run_dir.name}")
            else:
                others = running_testbeds()
                if others:
                    log(f"note: {len(others)} other testbed VM(s) still running "
                        f"({', '.join(o.run_dir.name for o in others)}); this one shares "
                        "the host's cores with them")
                tb = boot(image, ns.accel, keep=ns.keep, package=package)
        shares = PRODUCTION_SHARES if image.production else DEV_SHARES
        env.setdefault("XENTOOL_GUEST_DIR", f"{shares}/kit/{kit.name}")
        cwd = Path.cwd() if Path.cwd().is_relative_to(CHECKOUT) else CHECKOUT
        try:
            return run_job(tb, cmd, cwd, env, ns.timeout)
        finally:
            if tb.owned:
                tb.stop()
    except TestbedError as exc:
        log(str(exc))
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
