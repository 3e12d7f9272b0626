"""Process-level guards for headless OpenGL rendering (EGL / OSMesa on a CPU machine)."""

from __future__ import annotations

import importlib.util
import os
import sys


def ensure_gl_backend() -> None:
    """Honour ``MUJOCO_GL`` even when mujoco was imported before it was set.

    mujoco picks its OpenGL backend once, when it is first imported; ``import envs`` sets
    ``MUJOCO_GL=egl``, but a process that imported mujoco earlier (a test module, another library)
    got the default GLFW backend, which fails without a display. Switch to the named headless
    backend.
    """
    wanted = os.environ.get("MUJOCO_GL", "").lower().strip()
    if wanted not in ("egl", "osmesa"):
        return
    try:
        from mujoco.rendering.classic import gl_context
    except ImportError:
        return
    if getattr(gl_context, "_MUJOCO_GL", wanted) == wanted:
        return
    try:
        if wanted == "egl":
            from mujoco.egl import GLContext
        else:
            from mujoco.osmesa import GLContext
    except ImportError:
        return  # the renderer will fail with its own message
    gl_context.GLContext = GLContext
    gl_context._MUJOCO_GL = wanted


def load_triton_before_mesa() -> None:
    """Load triton's LLVM before Mesa's, if triton is installed and neither is loaded yet.

    Mesa's software renderer (llvmpipe, behind EGL on a CPU machine) loads ``libLLVM`` at the first
    render, and loading triton's ``libtriton.so`` (which bundles its own LLVM) after that crashes
    the process with a segmentation fault; the other order is fine. torch imports triton lazily
    (``torch.utils.flop_counter``, ``torch._dynamo``, optimizers' compiled paths), so any process
    that renders and later touches one of those would crash. Called before the first renderer.
    """
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        with open("/proc/self/maps") as maps:
            if any("libLLVM" in line for line in maps):
                return  # too late: Mesa's LLVM is in; importing triton now would crash
    except OSError:
        return
    try:
        import triton  # noqa: F401
    except Exception:
        pass
