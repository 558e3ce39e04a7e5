"""Exact int8 matrix products on the CPU, with float32 BLAS.

float32 BLAS is exact for int8 operands when K is cut into chunks of at most
:data:`K_CHUNK`: every partial sum of a chunk is bounded by
``1024 * 128 * 128 = 2**24``, and float32 represents every integer up to
``2**24`` exactly, whatever order BLAS adds in. Chunks are added in int32.
numpy releases the GIL inside BLAS and the casts.

Three users share this one implementation: the emulated NPU computes each
run with it, the pipeline's host path computes whole requests with it when
the device would not pay (:func:`host_matmul`), and the benchmarks use it as
the bare compute the pipeline is compared with.

Work arrays are reused (:class:`Scratch`, one per thread): a fresh megabyte
costs more in page faults than converting it.
"""

from __future__ import annotations

import threading

import numpy as np

#: Largest K chunk whose float32 partial sums are exact for int8 operands.
K_CHUNK = 1024


#: Alignment of scratch arrays, bytes (a cache line; BLAS packs faster from it).
_ALIGN = 64


class Scratch:
    """Work arrays of one thread, each grown to the largest size asked for."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}
        self._views: dict[tuple[str, tuple[int, int], type], np.ndarray] = {}

    def array(self, role: str, shape: tuple[int, int], dtype: type = np.float32) -> np.ndarray:
        """An uninitialised ``shape`` array of ``dtype`` for ``role``; valid until the next call."""
        key = (role, shape, dtype)
        view = self._views.get(key)
        if view is not None:
            return view
        size = shape[0] * shape[1]
        flat = self._flat.get(role)
        if flat is None or flat.size < size or flat.dtype != dtype:
            flat = self._flat[role] = _aligned(size, dtype)
            self._views = {k: v for k, v in self._views.items() if k[0] != role}
        if len(self._views) >= 256:  # many shapes: keep the cache small
            self._views.clear()
        view = self._views[key] = flat[:size].reshape(shape)
        return view


def _aligned(size: int, dtype: type) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(size * itemsize + _ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % _ALIGN
    return raw[skip : skip + size * itemsize].view(dtype)


#: Most int8 ops (2 per multiply-add) one BLAS call of the emulated device
#: computes: about 10 ms here. OpenBLAS runs one multi-threaded call at a
#: time per process, and a second caller waits for the whole call in flight
#: (measured here: a 256^3 product beside a 100 ms one in another thread
#: waited up to 100 ms). Cut into row panels, a long run lets the host path's
#: products, and the caller's own numpy, in between panels, for about 2% of
#: its speed (panels of 512 rows of a 1536x1024x2048 product, measured).
PANEL_OPS = 2**31


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, panel_ops: int | None) -> None:
    """``out[...] = a @ b``, in row panels of about ``panel_ops`` ops each if given."""
    m, k = a.shape
    rows = m if panel_ops is None else max(1, panel_ops // max(1, 2 * k * b.shape[1]))
    for r0 in range(0, m, rows):
        np.matmul(a[r0 : r0 + rows], b, out=out[r0 : r0 + rows])


def exact_product(
    a: np.ndarray,
    b: np.ndarray,
    scratch: Scratch,
    out: np.ndarray | None = None,
    panel_ops: int | None = None,
) -> np.ndarray:
    """``a @ b`` for float32 matrices holding int8 values, exactly.

    Without ``out``: returns float32 when K fits one chunk (its values are
    exact integers), else int32 (chunk sums added in int32); the result lives
    in ``scratch``. With ``out`` (an int32 array of the product's shape, or
    a view of the product's logical shape): the exact product is written
    into it, and it is returned. With ``panel_ops``, each BLAS call computes
    row panels of about that many ops (:data:`PANEL_OPS`).
    """
    (m, k), n = a.shape, b.shape[1]
    part = scratch.array("product", (m, n))
    if k <= K_CHUNK:
        _matmul(a, b, part, panel_ops)
        if out is None:
            return part
        np.copyto(out, part if out.ndim == 2 else part.reshape(out.shape), casting="unsafe")
        return out
    acc = scratch.array("sum", (m, n), np.int32) if out is None else out
    chunk = part if acc.ndim == 2 else part.reshape(acc.shape)
    for k0 in range(0, k, K_CHUNK):
        _matmul(a[:, k0 : k0 + K_CHUNK], b[k0 : k0 + K_CHUNK], part, panel_ops)
        if k0 == 0:
            np.copyto(acc, chunk, casting="unsafe")
        else:
            np.add(acc, chunk, out=acc, casting="unsafe")  # exact: added in float64
    return acc


#: Most int8 ops of one BLAS call of the host path while the device has work
#: (``host_matmul(single_thread=True)``): OpenBLAS runs a call this small on
#: the calling thread alone (measured here: 64^3 calls never waited
#: beside a long product in another thread; 128^3 ones did). Two threads
#: calling multi-threaded BLAS at once slow each other down many times over
#: (here, a 146 ms emulated product took 230-630 ms beside host-path
#: products of 128^3 to 256^3); single-threaded panels leave the pool to the
#: emulated device, or to the caller's own numpy.
SINGLE_THREAD_OPS = 2**19

_THREAD_SCRATCH = threading.local()


def thread_scratch() -> Scratch:
    """The calling thread's own :class:`Scratch` (made on first use)."""
    scratch = getattr(_THREAD_SCRATCH, "scratch", None)
    if scratch is None:
        scratch = _THREAD_SCRATCH.scratch = Scratch()
    return scratch


def host_matmul(
    a: np.ndarray, b: np.ndarray, out: np.ndarray, single_thread: bool = False
) -> np.ndarray:
    """The exact int32 product of int8 matrices ``a`` (M, K) and ``b`` (K, N), into ``out``.

    ``out`` is an int32 (M, N) array. Each operand is converted to float32
    once (into the calling thread's scratch), then multiplied exactly in K
    chunks, in whole BLAS calls (on as many threads as BLAS takes), or with
    ``single_thread`` in row panels of at most :data:`SINGLE_THREAD_OPS` ops
    per call, so that it runs on the calling thread alone. Costs about ``2 * M * K * N /
    host_ops_per_s`` seconds plus a few microseconds
    (:meth:`npu_pipeline.profiles.DeviceProfile.host_seconds`).
    """
    (m, k), n = a.shape, b.shape[1]
    scratch = thread_scratch()
    a32 = scratch.array("a", (m, k))
    b32 = scratch.array("b", (k, n))
    np.copyto(a32, a)
    np.copyto(b32, b)
    panels = SINGLE_THREAD_OPS if single_thread else None
    return exact_product(a32, b32, scratch, out=out, panel_ops=panels)
