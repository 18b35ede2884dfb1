"""Close every simulator that is still open when the interpreter exits, before it tears modules down.

MuJoCo's ``mujoco.Renderer`` (Meta-World) and robosuite's ``MjRenderContext`` / ``EGLGLContext``
(LIBERO) free their EGL contexts in ``__del__``. An env nobody closed is collected only during
interpreter shutdown, after PyOpenGL's EGL bindings and error machinery are half torn down, so every
such ``__del__`` prints "Exception ignored in ... EGLError" (``OpenGL/error.py`` ``glCheckError``).
Worse, both libraries register ``atexit.register(EGL.eglTerminate, display)`` when they make their
first context (``mujoco/egl/__init__.py``, ``robosuite/renderers/context/egl_context.py``), and
:mod:`atexit` runs its hooks last-registered first: any exit hook registered *before* the first
context would close the envs on a terminated display, with the same error. Closed explicitly
(``env.close()``: renderer first, then the simulator) nothing is printed.

So envs register here once their contexts exist (:func:`track`, at the end of their constructor), and
every registration moves our :mod:`atexit` hook after the libraries' ``eglTerminate``: at exit it
runs first, while the display and the modules are alive, and closes the envs still open, newest
first. Closing twice is a no-op for every env that registers.
"""

from __future__ import annotations

import atexit
import logging
import weakref

log = logging.getLogger(__name__)
_open: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_count = 0


def track(env) -> None:
    """Close ``env`` (anything with ``close()``) at exit if it is still alive then."""
    global _count
    _count += 1
    _open[_count] = env
    atexit.unregister(close_all)  # last registered runs first: before EGL's eglTerminate
    atexit.register(close_all)


def close_all() -> None:
    for key in sorted(_open.keys(), reverse=True):
        env = _open.pop(key, None)
        if env is None:
            continue
        try:
            env.close()
        except Exception:  # noqa: BLE001 - exiting anyway; one env must not keep the others open
            log.debug("closing %r at exit failed", env, exc_info=True)
