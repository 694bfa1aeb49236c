"""The ways of making one more venv with the same packages, one class each.

Every strategy works on a ``Site``: a filesystem of the run holding a seed venv (a native install of
the workload, with bytecode), uv's warm cache, and what a strategy prepares once (overlay layers, a
venvfs store). ``create`` is what the benchmark times; ``check`` says, before anything is built, why
a strategy cannot run here, and that reason goes into the report verbatim.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import venvfs
from venvfs.bench import trees
from venvfs.bench.scratch import Filesystem, force_unmount
from venvfs.bench.workload import Workload


class Unavailable(Exception):
    """This strategy cannot run here; ``str()`` says why (shown to the user as is)."""


@dataclass
class Site:
    fs: Filesystem
    python: str
    workload: Workload
    seed: Path | None = None
    layers: list[str] | None = None
    prepared: set[str] = field(default_factory=set)

    @property
    def layers_probe(self) -> str:
        """A name every venv's site-packages has (a dist-info directory): a lookup that proves a mount answers."""
        assert self.seed is not None
        found = sorted(trees.site_packages(self.seed).glob("*.dist-info"))
        return found[0].name if found else "."

    @property
    def uv_cache(self) -> Path:
        return self.fs.root / "uv-cache"

    @property
    def layers_dir(self) -> Path:
        return self.fs.root / "layers"

    @property
    def store(self) -> Path:
        return self.fs.root / "venvfs-store"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "UV_", "PIP_", "VIRTUAL_ENV"))}
        env.update(UV_CACHE_DIR=str(self.uv_cache), UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never",
                   VENVFS_STORE=str(self.store), PIP_DISABLE_PIP_VERSION_CHECK="1")
        return env


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, what: str = "") -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        raise RuntimeError(f"{what or argv[0]} exited {proc.returncode}: {' | '.join(lines[-3:])[:400]}")
    return proc.stdout


def install(site: Site, venv: Path, *, link_mode: str, compile_bytecode: bool) -> None:
    """Install the workload into ``venv`` offline from the wheelhouse (uv, else pip)."""
    wl = site.workload
    uv = trees.uv_binary()
    if uv:
        argv = [uv, "pip", "install", "-q", "--offline", "--no-index", "--find-links", str(wl.wheelhouse),
                "--python", str(venv / "bin" / "python"), "--link-mode", link_mode]
        if compile_bytecode:
            argv.append("--compile-bytecode")
        _run([*argv, *wl.requirements], env=site.env(), what="uv pip install")
    else:
        argv = [site.python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                "--isolated", "--no-index", "--find-links", str(wl.wheelhouse)]
        if not compile_bytecode:
            argv.append("--no-compile")
        _run([*argv, *wl.requirements], env=site.env(), what="pip install")


def ensure_seed(site: Site) -> Path:
    """The site's native venv: the source of the file-by-file strategies and the overlay layers."""
    if site.seed is None:
        seed = site.fs.root / "seed"
        trees.make_skeleton(site.python, seed)
        install(site, seed, link_mode="copy", compile_bytecode=True)
        site.seed = seed
    return site.seed


def wait_answering(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.stat(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


class Strategy:
    name = ""
    label = ""
    reflink_fs = False  # runs on the reflink filesystem instead of the ext4 one
    mounts = False  # its venvs have a mount to time and to take down
    has_daemon = False  # a user-space filesystem process whose memory the report shows

    def check(self) -> str | None:
        return None

    def prepare(self, site: Site) -> None:
        """One-time work shared by all its venvs (not timed; like filling a store or a cache)."""
        ensure_seed(site)

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        """Make one more venv at ``dest``; returns extra timings (``mount_s``)."""
        raise NotImplementedError

    def teardown(self, site: Site, venv: Path) -> None:
        return None

    def finish(self, site: Site) -> None:
        """After the run, before the scratch filesystems go: stop what ``prepare`` or ``create`` left
        running there."""
        return None

    def remount(self, site: Site, venv: Path) -> float:
        """Unmount ``venv`` and time mounting it again until a lookup in it answers (mounts only)."""
        raise NotImplementedError

    def daemon_pid(self, venv: Path) -> int | None:
        return None

    def mount_pids(self, venv: Path) -> list[int]:
        """Every process that lives as long as the mount of ``venv`` and no longer: its memory is the mount's."""
        pid = self.daemon_pid(venv)
        return [pid] if pid is not None else []


class Native(Strategy):
    name = "native"
    label = "native ext4 venv (installer copy + bytecode)"

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        trees.make_skeleton(site.python, dest)
        install(site, dest, link_mode="copy", compile_bytecode=True)
        return {}


class FileByFile(Strategy):
    """A venv whose site-packages is the seed's, entry by entry: copies, hardlinks, symlinks or reflinks."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = mode
        self.reflink_fs = mode == "reflink"
        self.label = {
            "copy": "copy of every file",
            "hardlink": "hardlink of every file",
            "symlink": "symlink farm to a shared tree",
            "reflink": "reflink (FICLONE) of every file",
        }[mode]

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        seed = ensure_seed(site)
        sp = trees.make_skeleton(site.python, dest)
        trees.populate(trees.site_packages(seed), sp, self.mode)
        trees.copy_scripts(seed, dest)
        return {}


class UvLinkMode(Strategy):
    """uv's own install from its warm cache with ``--link-mode`` (what uv users get)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"uv-{mode}"
        self.reflink_fs = mode == "clone"
        self.label = f"uv pip install --link-mode {mode}"

    def check(self) -> str | None:
        return None if trees.uv_binary() else "uv is not installed (pip install uv)"

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        trees.make_skeleton(site.python, dest)
        install(site, dest, link_mode=self.mode, compile_bytecode=False)
        return {}


class _Overlay(Strategy):
    """One lower layer per distribution (hardlinked from the seed once), a per-venv upper layer."""

    mounts = True

    def prepare(self, site: Site) -> None:
        seed = ensure_seed(site)
        if site.layers is None:
            site.layers = trees.split_layers(trees.site_packages(seed), site.layers_dir)

    def _mount(self, site: Site, lower: str, upper: Path, work: Path, target: Path) -> None:
        raise NotImplementedError

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        seed = ensure_seed(site)
        sp = trees.make_skeleton(site.python, dest)
        upper, work = dest / ".overlay" / "upper", dest / ".overlay" / "work"
        work.mkdir(parents=True)
        # The skeleton's own files (uv's _virtualenv.pth) belong to this venv: they go to its upper layer.
        sp.rename(upper)
        sp.mkdir()
        trees.copy_scripts(seed, dest)
        self._mount_venv(site, dest)
        return {}

    def _mount_venv(self, site: Site, dest: Path) -> None:
        assert site.layers is not None
        sp = trees.site_packages(dest)
        # Relative layer names, resolved against cwd by the kernel: 28 absolute paths would not fit
        # in the one page that mount options get.
        self._mount(site, ":".join(site.layers), dest / ".overlay" / "upper", dest / ".overlay" / "work", sp)
        wait_answering(sp / site.layers_probe)

    def remount(self, site: Site, venv: Path) -> float:
        self.teardown(site, venv)
        start = time.perf_counter()
        self._mount_venv(site, venv)
        return time.perf_counter() - start

    def teardown(self, site: Site, venv: Path) -> None:
        with contextlib.suppress(RuntimeError):
            force_unmount(str(trees.site_packages(venv)))


class KernelOverlay(_Overlay):
    name = "overlayfs"
    label = "kernel overlayfs, one lower layer per distribution"

    def check(self) -> str | None:
        if os.geteuid() != 0:
            return "mounting kernel overlayfs needs root"
        try:
            if "overlay" not in Path("/proc/filesystems").read_text():
                return "the kernel has no overlay filesystem (modprobe overlay)"
        except OSError as e:
            return f"cannot read /proc/filesystems: {e}"
        return None

    def _mount(self, site: Site, lower: str, upper: Path, work: Path, target: Path) -> None:
        _run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
              str(target)], cwd=site.layers_dir, what="mount -t overlay")


def fuse_problem() -> str | None:
    if not Path("/dev/fuse").exists():
        return "/dev/fuse does not exist"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    return None


class FuseOverlay(_Overlay):
    name = "fuse-overlayfs"
    has_daemon = True
    label = "fuse-overlayfs (C), one lower layer per distribution"

    def check(self) -> str | None:
        if shutil.which("fuse-overlayfs") is None:
            return "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
        return fuse_problem()

    def _mount(self, site: Site, lower: str, upper: Path, work: Path, target: Path) -> None:
        _run(["fuse-overlayfs", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(target)],
             cwd=site.layers_dir, what="fuse-overlayfs")

    def teardown(self, site: Site, venv: Path) -> None:
        sp = str(trees.site_packages(venv))
        if subprocess.run(["fusermount3", "-u", sp], capture_output=True).returncode != 0:
            force_unmount(sp)

    def daemon_pid(self, venv: Path) -> int | None:
        return find_process([b"fuse-overlayfs", os.fsencode(trees.site_packages(venv))])


def find_process(needles: list[bytes]) -> int | None:
    """The pid of a process whose command line contains every one of ``needles``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if all(n in cmdline for n in needles):
            return int(entry.name)
    return None


_installed_python: str | None = None


def venvfs_argv() -> list[str]:
    """This very venvfs, run as an installed one is: from a venv whose site-packages holds it (a link
    to the package) with its dependencies on a ``.pth`` line (where this interpreter finds them). Not
    by this interpreter: from a source checkout that is an editable install, whose import hook
    (setuptools' editable finder, which site loads in every interpreter of that venv) cost each
    venvfs command ~15 ms (measured) that an installed venvfs does not pay."""
    global _installed_python
    if _installed_python is None:
        _installed_python = _installed_env()
    return [_installed_python, "-m", "venvfs"]


def _installed_env() -> str:
    import atexit
    import sysconfig
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="venvfs-bench-installed-"))
    atexit.register(shutil.rmtree, root, True)
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], what="python -m venv")
    packages = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    package = Path(venvfs.__file__).resolve().parent
    (packages / "venvfs").symlink_to(package, target_is_directory=True)
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p) != package.parent]
    (packages / "venvfs-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return str(root / "bin" / "python")


def venvfs_env(site: Site) -> dict[str, str]:
    return site.env()  # no PYTHONPATH: venvfs_argv's interpreter has it installed


def venvfs_has(command: str) -> str | None:
    """None when this venvfs has ``command``, else why not (the mount lands in its own change)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([*venvfs_argv(), command, "--help"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return f"this venvfs has no `venvfs {command}` command yet"
    return None


class _Venvfs(Strategy):
    """venvfs itself: the distributions enter the store once (from a template venv, like a warm cache:
    not timed); each new venv is an empty venv that ``venvfs add`` gives the same selection (the
    mount: ``venvfs create --like``)."""

    commands: tuple[str, ...] = ("adopt", "add")

    def argv(self) -> list[str]:
        return venvfs_argv()

    def env(self, site: Site) -> dict[str, str]:
        return venvfs_env(site)

    def check(self) -> str | None:
        for command in self.commands:
            missing = venvfs_has(command)
            if missing:
                return missing
        return None

    def prepare(self, site: Site) -> None:
        if "venvfs" not in site.prepared:
            template = site.fs.root / "venvfs-template"
            trees.make_skeleton(site.python, template)
            install(site, template, link_mode="copy", compile_bytecode=False)
            _run([*venvfs_argv(), "adopt", "--no-hooks", str(template)], env=venvfs_env(site),
                 what="venvfs adopt")
            site.prepared.add("venvfs")

    def _new(self, site: Site, dest: Path, link_mode: str) -> None:
        template = site.fs.root / "venvfs-template"
        env, argv = self.env(site), self.argv()
        trees.make_skeleton(site.python, dest)
        _run([*argv, "adopt", "--no-hooks", str(dest)], env=env, what="venvfs adopt")
        _run([*argv, "add", "--link-mode", link_mode, str(dest), *_selection(template)], env=env,
             what="venvfs add")


class VenvfsMaterialize(_Venvfs):
    """venvfs without FUSE: the selection written as real files linked from the store."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"venvfs-{mode}"
        self.reflink_fs = mode == "reflink"
        self.label = f"venvfs add --link-mode {mode} (materialized from the store)"

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        self._new(site, dest, self.mode)
        return {}


class VenvfsMount(_Venvfs):
    """venvfs mount: site-packages served from the store by the FUSE daemon."""

    name = "venvfs"
    label = "venvfs mount (FUSE overlay of the store)"
    mounts = True
    has_daemon = True
    commands = ("adopt", "add", "create", "mount", "umount")

    def check(self) -> str | None:
        return super().check() or fuse_problem()

    def prepare(self, site: Site) -> None:
        super().prepare(site)
        if f"{self.name}-service" in site.prepared:
            return
        # A user's session has the mount service running (the first mount starts it, or systemd's
        # unit): one venv made and removed, untimed, as uv's cache is warmed for the uv strategies.
        warm = site.fs.root / f"{self.name}-warm-up"
        self.create(site, warm)
        self.teardown(site, warm)
        shutil.rmtree(warm, ignore_errors=True)
        site.prepared.add(f"{self.name}-service")

    def create(self, site: Site, dest: Path) -> dict[str, float]:
        # The one command the README gives for one more venv (issue 16's measure): it makes the venv
        # (uv venv, the floor every strategy pays through make_skeleton), selects the template's
        # builds and mounts; the selection is in place before the first mount, so no view reload.
        template = site.fs.root / "venvfs-template"
        _run([*self.argv(), "create", "--no-hooks", "--like", str(template), str(dest)], env=self.env(site),
             what="venvfs create")
        wait_answering(trees.site_packages(dest) / site.layers_probe)
        self.check_daemon(dest)
        return {}

    def check_daemon(self, venv: Path) -> None:
        """Raise when the venv's daemon is not the kind this strategy measures."""

    def remount(self, site: Site, venv: Path) -> float:
        self.teardown(site, venv)
        start = time.perf_counter()
        _run([*self.argv(), "mount", "--mode", "fuse", str(venv)], env=self.env(site), what="venvfs mount")
        wait_answering(trees.site_packages(venv) / site.layers_probe)
        return time.perf_counter() - start

    def teardown(self, site: Site, venv: Path) -> None:
        proc = subprocess.run([*self.argv(), "umount", str(venv)], capture_output=True, env=self.env(site))
        if proc.returncode != 0:
            force_unmount(str(trees.site_packages(venv)))

    def finish(self, site: Site) -> None:
        # The mount services of the run's store (venvfs's and venvfs-stock's) would wait half an hour
        # for another request; venvfs-stock's maps its pyfuse3 from the scratch filesystem, whose
        # loop device would stay attached (its image deleted but not freed) until then.
        while (pid := find_process([b"venvfs.cli.service", os.fsencode(site.store)])) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)

    def daemon_pid(self, venv: Path) -> int | None:
        # venvfs/mount/daemon.py records the daemon's pid in VENV/.venvfs/daemon.json: "server" is the
        # process serving the mount, "pid" its keeper where it has one (venvfs/mount/keeper.py).
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads((venv / ".venvfs" / "daemon.json").read_text())
            pid = int(info.get("server") or info["pid"])
            if Path(f"/proc/{pid}").exists():
                return pid
        return find_process([b"venvfs", os.fsencode(trees.site_packages(venv))])

    def mount_pids(self, venv: Path) -> list[int]:
        # The daemon, the keeper that holds its FUSE connection and the watcher that unmounts after
        # both (docs/mount.md): one more mount costs all three.
        pids = set(super().mount_pids(venv))
        with contextlib.suppress(OSError, ValueError, TypeError):
            info = json.loads((venv / ".venvfs" / "daemon.json").read_text())
            for key in ("pid", "server", "watcher"):
                if isinstance(info.get(key), int) and Path(f"/proc/{info[key]}").exists():
                    pids.add(info[key])
        return sorted(pids)


class VenvfsStock(VenvfsMount):
    """venvfs mount on the pyfuse3 that ``pip install 'venvfs[fuse]'`` gives (built from PyPI's sdist,
    unpatched), next to ``venvfs`` on the patched build (``scripts/build-pyfuse3``): what the patch
    buys. Stock pyfuse3 cannot run the kernel's "no open" mode, so every open costs an OPEN and a
    RELEASE round trip.

    Its own environment (a venv with the ``fuse`` extra's requirements from the index, running this
    venvfs from its source) and its own mount service (``VENVFS_RUNTIME_DIR``, so a service running
    the patched pyfuse3 for the same store never forks its daemons); the store is the one ``venvfs``
    uses."""

    name = "venvfs-stock"
    label = "venvfs mount on stock pyfuse3 from PyPI (per-open)"
    python: str | None = None  # the stock environment's interpreter, once prepared

    def env_dir(self, site: Site) -> Path:
        return site.fs.root / "venvfs-stock-env"

    def argv(self) -> list[str]:
        assert self.python is not None, "prepare() first"
        return [self.python, "-m", "venvfs"]

    def env(self, site: Site) -> dict[str, str]:
        env = venvfs_env(site)
        # Only venvfs itself on the path: an installed venvfs's parent is its site-packages, whose
        # pyfuse3 (the patched one, where venvfs was installed with it) would shadow the stock one.
        source = site.fs.root / "venvfs-stock-src"
        if not (source / "venvfs").exists():
            source.mkdir(exist_ok=True)
            (source / "venvfs").symlink_to(Path(venvfs.__file__).resolve().parent, target_is_directory=True)
        env["PYTHONPATH"] = str(source)
        runtime = site.fs.root / "venvfs-stock-runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["VENVFS_RUNTIME_DIR"] = str(runtime)
        return env

    def prepare(self, site: Site) -> None:
        python = self.env_dir(site) / "bin" / "python"
        if not python.exists():
            # The interpreter venvfs runs on here too (the venvs it serves may use another one).
            _run([sys.executable, "-m", "venv", str(self.env_dir(site))], what="python -m venv")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
            # From source, as for a user: PyPI has no pyfuse3 wheels, and a patched one a cache or a
            # find-links directory may hold (3.5.0+venvfs2 sorts above 3.5.0) is not what is measured.
            _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-binary",
                  "pyfuse3", *fuse_requirements()], env=env, what="pip install (stock pyfuse3)")
        # With the environment its commands and daemons run in: what they import is what is measured.
        out = _run([str(python), "-c", _STOCK_PROBE], env=self.env(site), what="stock pyfuse3 check").strip()
        if out != "stock":
            raise Unavailable(f"the pyfuse3 installed from the index is not stock ({out})")
        self.python = str(python)
        version = _run([str(python), "-c", "import importlib.metadata as m; print(m.version('pyfuse3'))"],
                       what="pyfuse3 version").strip()
        self.label = f"venvfs mount on stock pyfuse3 {version} from the index (per-open)"
        super().prepare(site)

    def check_daemon(self, venv: Path) -> None:
        # The daemon says which mode it runs (venvfs/mount/daemon.py): "no open" only on the patch.
        info = json.loads((venv / ".venvfs" / "daemon.json").read_text())
        if info.get("no_open", False):
            raise RuntimeError(f"the daemon of {venv} runs the patched pyfuse3 (no-open), not the stock one")


# Stock pyfuse3 has neither of the patch's feature flags (scripts/build-pyfuse3 asserts both).
_STOCK_PROBE = ("import pyfuse3, trio\n"
                "flags = ('ZERO_FH_IS_INODE', 'CACHE_SYMLINKS_OPTION')\n"
                "print('patched' if any(getattr(pyfuse3, f, False) for f in flags) else 'stock')")


def fuse_requirements() -> list[str]:
    """What ``pip install 'venvfs[fuse]'`` installs besides venvfs: its requirements and the ``fuse`` extra's."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        declared = metadata.requires("venvfs") or []
    except metadata.PackageNotFoundError:
        declared = []
    if not declared:
        import tomllib  # a source tree that was never installed (Python 3.11+)

        pyproject = Path(venvfs.__file__).resolve().parent.parent / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text())["project"]
        return [*project["dependencies"], *project["optional-dependencies"]["fuse"]]
    wanted = []
    for text in declared:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "fuse"}):
            req.marker = None
            wanted.append(str(req))
    return wanted


def _selection(template: Path) -> list[str]:
    """What the template venv selected, as requirements ``venvfs add`` understands (name==version)."""
    reqs = []
    for di in sorted(trees.site_packages(template).glob("*.dist-info")):
        name, _, version = di.name[: -len(".dist-info")].partition("-")
        reqs.append(f"{name}=={version}")
    return reqs


def all_strategies() -> list[Strategy]:
    return [
        Native(),
        FileByFile("copy"), FileByFile("hardlink"), FileByFile("symlink"), FileByFile("reflink"),
        UvLinkMode("copy"), UvLinkMode("hardlink"), UvLinkMode("symlink"), UvLinkMode("clone"),
        KernelOverlay(), FuseOverlay(),
        VenvfsMaterialize("hardlink"), VenvfsMaterialize("reflink"), VenvfsMaterialize("copy"), VenvfsMount(),
        VenvfsStock(),
    ]


KNOWN = [s.name for s in all_strategies()]
# venvfs-copy is plain copying with extra steps: available, not run unless asked for.
DEFAULT = [n for n in KNOWN if n != "venvfs-copy"]
