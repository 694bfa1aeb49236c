"""The interpreter-start hook: ``_venvfs_automount.pth`` in the underlying site-packages. A mounted venv
hides it; an unmounted one runs its line at start, which mounts the venv with venvfs's own
interpreter and then adds the mounted site-packages again."""

from __future__ import annotations

from venvfs.hooks.target import MOUNT_TIMEOUT, HookTarget

# Runs in the venv's interpreter while site.py processes site-packages, before any user code, with
# only the stdlib. Kept in one function so that nothing leaks into site's namespace.
_PTH_CODE = r'''
def _venvfs_automount(venv, sp, state, pth, argv, store, marker):
    import os, sys
    if getattr(sys, "_venvfs_automount_ran", False):
        return
    sys._venvfs_automount_ran = True
    if os.environ.get("VENVFS_AUTOMOUNT_ACTIVE") or os.environ.get("VENVFS_NO_AUTOMOUNT"):
        return
    def say(msg):
        sys.stderr.write("venvfs: " + msg + "\n")
    try:
        with open(state, "rb") as f:
            import json
            st = json.load(f)
    except FileNotFoundError:
        st = {}
    except (OSError, ValueError) as e:
        say("automount of %s skipped: unreadable %s (%s)" % (venv, state, e))
        return
    switching = os.path.exists(marker)  # a killed switch to the mounted layout: mounting finishes it
    if not switching and (st.get("layout") != "mounted" or not st.get("hooks", True)):
        # Nothing to mount (materialized, ejected or opted out): remove the leftover so that later
        # starts skip even this.
        try:
            os.unlink(pth)
        except OSError:
            pass
        return
    if not os.path.ismount(sp):
        if not os.path.exists(argv[0]):
            say("cannot mount %s: venvfs's interpreter %s is gone (reinstall venvfs, or run "
                "`venvfs hook uninstall`, or set VENVFS_NO_AUTOMOUNT=1)" % (venv, argv[0]))
            return
        import subprocess
        env = dict(os.environ, VENVFS_AUTOMOUNT_ACTIVE="1", VENVFS_STORE=store)
        try:
            proc = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=%(timeout)d)
        except (OSError, subprocess.SubprocessError) as e:
            say("cannot mount %s at interpreter start (%s)" % (venv, e))
            return
        lines = [l for l in proc.stderr.decode("utf-8", "replace").splitlines() if l.strip()]
        if proc.returncode != 0:
            why = lines[-1] if lines else "exit status %d" % proc.returncode
            if why.startswith("venvfs: "):
                why = why[len("venvfs: "):]
            say("cannot mount %s at interpreter start: %s" % (venv, why))
            return
        if lines:
            sys.stderr.write(lines[-1] + "\n")  # e.g. why it fell back to materialization
    import importlib, site
    real = os.path.realpath(sp)
    entry = sp
    for p in list(sys.path_importer_cache):
        if p and os.path.realpath(p) == real:
            del sys.path_importer_cache[p]
    for p in sys.path:
        if p and os.path.realpath(p) == real:
            entry = p
            break
    importlib.invalidate_caches()
    # Again, now that site-packages is the mount: its distributions' .pth files run too.
    site.addsitedir(entry)
'''.replace("%(timeout)d", str(MOUNT_TIMEOUT))


def render_pth(target: HookTarget) -> str:
    args = (str(target.venv), str(target.site_packages), str(target.state_file), str(target.pth),
            target.argv, target.store, str(target.switch_marker))
    call = f"_venvfs_automount{args!r}"
    # site.py execs lines that start with "import"; everything must fit on that one line.
    line = f"import sys; exec({(_PTH_CODE + call + chr(10))!r}, {{'__name__': '_venvfs_automount'}})"
    return (
        "# venvfs automount hook: mounts this venv when Python starts while it is not mounted.\n"
        "# The mount hides this file. Remove it with `venvfs hook uninstall VENV`; disable it for a\n"
        "# process with VENVFS_NO_AUTOMOUNT=1.\n"
        f"{line}\n"
    )
