"""numba kernels for the analytic phantom: exact cone-beam line integrals and voxelisation.

Pure functions on packed arrays (see :mod:`bonemet_dask.synth.primitives`); no Dask, no I/O.
Shape rows: ``[kind, cx, cy, cz, M00..M22, tau, sx, sy, sz, radius]`` with ``q = M @ (p - c)`` the
unit-solid coordinates of a world point ``p``.  Every sum runs in a fixed order, so results are
bit-identical run to run and across thread counts.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_BIG = 1e30
_TINY = 1e-14


@nb.njit(cache=True, inline="always")
def _slab(q0z: float, qdz: float) -> tuple[float, float]:
    """Parameter interval where ``|q0z + t qdz| <= 1``."""
    if abs(qdz) < _TINY:
        if abs(q0z) <= 1.0:
            return -_BIG, _BIG
        return _BIG, -_BIG
    a = (-1.0 - q0z) / qdz
    b = (1.0 - q0z) / qdz
    return (a, b) if a < b else (b, a)


@nb.njit(cache=True)
def _interval(kind, tau, q0x, q0y, q0z, qdx, qdy, qdz) -> tuple[float, float]:
    """Parameter interval of the line ``q0 + t qd`` inside a unit solid (empty: lo >= hi)."""
    if kind == 0:  # unit ball
        a = qdx * qdx + qdy * qdy + qdz * qdz
        b = q0x * qdx + q0y * qdy + q0z * qdz
        c = q0x * q0x + q0y * q0y + q0z * q0z - 1.0
        disc = b * b - a * c
        if disc <= 0.0 or a < _TINY:
            return _BIG, -_BIG
        sq = np.sqrt(disc)
        return (-b - sq) / a, (-b + sq) / a
    zlo, zhi = _slab(q0z, qdz)
    if zlo >= zhi:
        return _BIG, -_BIG
    if kind == 1:  # unit cylinder
        a = qdx * qdx + qdy * qdy
        b = q0x * qdx + q0y * qdy
        c = q0x * q0x + q0y * q0y - 1.0
        if a < _TINY:
            if c < 0.0:
                return zlo, zhi
            return _BIG, -_BIG
        disc = b * b - a * c
        if disc <= 0.0:
            return _BIG, -_BIG
        sq = np.sqrt(disc)
        return max(zlo, (-b - sq) / a), min(zhi, (-b + sq) / a)
    # truncated unit cone: radius alpha + beta z on |z| <= 1
    alpha = 0.5 * (1.0 + tau)
    beta = 0.5 * (tau - 1.0)
    r0 = alpha + beta * q0z
    r1 = beta * qdz
    a = qdx * qdx + qdy * qdy - r1 * r1
    b = q0x * qdx + q0y * qdy - r0 * r1
    c = q0x * q0x + q0y * q0y - r0 * r0
    if abs(a) < _TINY:
        if abs(b) < _TINY:
            if c < 0.0:
                return zlo, zhi
            return _BIG, -_BIG
        root = -c / (2.0 * b)
        if b > 0.0:
            return zlo, min(zhi, root)
        return max(zlo, root), zhi
    disc = b * b - a * c
    if a > 0.0:
        if disc <= 0.0:
            return _BIG, -_BIG
        sq = np.sqrt(disc)
        return max(zlo, (-b - sq) / a), min(zhi, (-b + sq) / a)
    if disc <= 0.0:
        return zlo, zhi
    sq = np.sqrt(disc)
    t1 = (-b - sq) / a
    t2 = (-b + sq) / a
    tlo, thi = (t1, t2) if t1 < t2 else (t2, t1)
    # inside on (-inf, tlo) and (thi, inf); the slab holds one nappe, so the result is one interval
    alo, ahi = zlo, min(zhi, tlo)
    blo, bhi = max(zlo, thi), zhi
    if alo < ahi and blo < bhi:
        return alo, bhi
    if alo < ahi:
        return alo, ahi
    return blo, bhi


@nb.njit(cache=True, inline="always")
def _inside(shape, px: float, py: float, pz: float) -> bool:
    """Whether a world point lies inside a packed shape."""
    dx = px - shape[1]
    dy = py - shape[2]
    dz = pz - shape[3]
    qx = shape[4] * dx + shape[5] * dy + shape[6] * dz
    qy = shape[7] * dx + shape[8] * dy + shape[9] * dz
    qz = shape[10] * dx + shape[11] * dy + shape[12] * dz
    kind = shape[0]
    if kind == 0:
        return qx * qx + qy * qy + qz * qz < 1.0
    if abs(qz) > 1.0:
        return False
    if kind == 1:
        return qx * qx + qy * qy < 1.0
    radius = 0.5 * (1.0 + shape[13]) + 0.5 * (shape[13] - 1.0) * qz
    return qx * qx + qy * qy < radius * radius


@nb.njit(cache=True, inline="always")
def _misses(cx, cy, cz, radius, sx, sy, sz, dx, dy, dz, inv_dd) -> bool:
    """Whether the line ``s + t d`` passes farther than ``radius`` from ``c``."""
    wx = cx - sx
    wy = cy - sy
    wz = cz - sz
    t = (wx * dx + wy * dy + wz * dz) * inv_dd
    ex = wx - t * dx
    ey = wy - t * dy
    ez = wz - t * dz
    return ex * ex + ey * ey + ez * ez > radius * radius


TILE = 16
"""Edge of the square detector tiles that share one list of candidate terms, pixels."""


@nb.njit(cache=True)
def _tile_lists(source, origin, col_step, row_step, nrows, ncols, spheres):
    """Per detector tile, the terms whose bounding sphere may project onto it (CSR arrays).

    The projected sphere is bounded by a disc 1.5x the paraxial size plus 2 pixels: conservative
    for fans well beyond SkyScan's 27 degrees; every ray still tests the sphere itself.
    """
    ntr = (nrows + TILE - 1) // TILE
    ntc = (ncols + TILE - 1) // TILE
    nx = col_step[1] * row_step[2] - col_step[2] * row_step[1]
    ny = col_step[2] * row_step[0] - col_step[0] * row_step[2]
    nz = col_step[0] * row_step[1] - col_step[1] * row_step[0]
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    nx, ny, nz = nx / norm, ny / norm, nz / norm
    ox, oy, oz = origin[0] - source[0], origin[1] - source[1], origin[2] - source[2]
    plane = ox * nx + oy * ny + oz * nz
    if plane < 0:
        nx, ny, nz, plane = -nx, -ny, -nz, -plane
    col2 = col_step[0] ** 2 + col_step[1] ** 2 + col_step[2] ** 2
    row2 = row_step[0] ** 2 + row_step[1] ** 2 + row_step[2] ** 2
    pitch = np.sqrt(min(col2, row2))
    nterms = spheres.shape[0]
    rects = np.empty((nterms, 4), np.int64)
    for t in range(nterms):
        wx = spheres[t, 0] - source[0]
        wy = spheres[t, 1] - source[1]
        wz = spheres[t, 2] - source[2]
        radius = spheres[t, 3]
        depth = wx * nx + wy * ny + wz * nz
        if depth - radius <= 1e-6 * plane:  # the sphere reaches the source plane: whole detector
            rects[t, 0], rects[t, 1], rects[t, 2], rects[t, 3] = 0, ntr - 1, 0, ntc - 1
            continue
        scale = plane / depth
        ox = source[0] + wx * scale - origin[0]
        oy = source[1] + wy * scale - origin[1]
        oz = source[2] + wz * scale - origin[2]
        rc = (ox * row_step[0] + oy * row_step[1] + oz * row_step[2]) / row2
        cc = (ox * col_step[0] + oy * col_step[1] + oz * col_step[2]) / col2
        half = 1.5 * radius * plane / (depth - radius) / pitch + 2.0
        r0 = max(0, int(np.floor(rc - half)))
        r1 = min(nrows - 1, int(np.ceil(rc + half)))
        c0 = max(0, int(np.floor(cc - half)))
        c1 = min(ncols - 1, int(np.ceil(cc + half)))
        if r0 > r1 or c0 > c1:
            rects[t, 0], rects[t, 1], rects[t, 2], rects[t, 3] = 1, 0, 1, 0
        else:
            rects[t, 0], rects[t, 1] = r0 // TILE, r1 // TILE
            rects[t, 2], rects[t, 3] = c0 // TILE, c1 // TILE
    counts = np.zeros(ntr * ntc + 1, np.int64)
    for t in range(nterms):
        for tr in range(rects[t, 0], rects[t, 1] + 1):
            for tc in range(rects[t, 2], rects[t, 3] + 1):
                counts[tr * ntc + tc + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    items = np.empty(offsets[-1], np.int64)
    for t in range(nterms):  # ascending term order: sums run in a fixed order
        for tr in range(rects[t, 0], rects[t, 1] + 1):
            for tc in range(rects[t, 2], rects[t, 3] + 1):
                tile = tr * ntc + tc
                items[fill[tile]] = t
                fill[tile] += 1
    return offsets, items, ntc


@nb.njit(cache=True)
def _ray_integral(
    sx, sy, sz, dx, dy, dz, q0, shapes, density, includes, excludes, spheres, candidates,
    lo_cache, hi_cache, stamp, ray, ex_lo, ex_hi,
):  # fmt: skip
    """Line integral of the phantom along the segment from ``s`` to ``s + d``.

    Only the terms listed in ``candidates`` are considered.  ``lo_cache``/``hi_cache``/``stamp``
    memoise each shape's interval for ray number ``ray``, since one shape is often shared by
    several terms (an outer cortex excluded by its neighbours).
    """
    dd = dx * dx + dy * dy + dz * dz
    inv_dd = 1.0 / dd
    n_inc = includes.shape[1]
    acc = 0.0
    for t in candidates:
        sp = spheres[t]
        if _misses(sp[0], sp[1], sp[2], sp[3], sx, sy, sz, dx, dy, dz, inv_dd):
            continue
        lo, hi = -_BIG, _BIG
        nex = 0
        for k in range(n_inc + excludes.shape[1]):
            sid = includes[t, k] if k < n_inc else excludes[t, k - n_inc]
            if sid < 0:
                continue
            if stamp[sid] != ray:
                sh = shapes[sid]
                qdx = sh[4] * dx + sh[5] * dy + sh[6] * dz
                qdy = sh[7] * dx + sh[8] * dy + sh[9] * dz
                qdz = sh[10] * dx + sh[11] * dy + sh[12] * dz
                a, b = _interval(sh[0], sh[13], q0[sid, 0], q0[sid, 1], q0[sid, 2], qdx, qdy, qdz)
                lo_cache[sid] = a
                hi_cache[sid] = b
                stamp[sid] = ray
            if k < n_inc:
                lo = max(lo, lo_cache[sid])
                hi = min(hi, hi_cache[sid])
                if hi <= lo:
                    break
            else:
                ex_lo[nex] = lo_cache[sid]
                ex_hi[nex] = hi_cache[sid]
                nex += 1
        if hi <= lo:
            continue
        length = hi - lo
        for mask in range(1, 1 << nex):  # inclusion-exclusion over the excluded shapes
            a, b, bits = lo, hi, 0
            for k in range(nex):
                if mask & (1 << k):
                    a = max(a, ex_lo[k])
                    b = min(b, ex_hi[k])
                    bits += 1
            if b > a:
                length += (b - a) if bits % 2 == 0 else -(b - a)
        acc += density[t] * length
    return acc * np.sqrt(dd)


@nb.njit(parallel=True, cache=True)
def project_view(
    source, origin, col_step, row_step, out, shapes, density, includes, excludes, spheres,
    subpixels,
):  # fmt: skip
    """Line integrals (mm x 1/mm) from ``source`` to every detector pixel of one view.

    Pixel ``(row, col)`` is centred at ``origin + col * col_step + row * row_step`` (world mm);
    ``out`` is (rows, cols) and is overwritten.  With ``subpixels = n > 1`` each pixel integrates
    ``n x n`` rays the way a detector does, averaging transmitted intensity:
    ``-log(mean(exp(-p)))``.
    """
    nrows, ncols = out.shape
    nshapes = shapes.shape[0]
    sx, sy, sz = source[0], source[1], source[2]
    offsets, items, ntc = _tile_lists(source, origin, col_step, row_step, nrows, ncols, spheres)
    # unit-frame source position of every shape: constant over the view
    q0 = np.empty((nshapes, 3))
    for s in range(nshapes):
        dx, dy, dz = sx - shapes[s, 1], sy - shapes[s, 2], sz - shapes[s, 3]
        q0[s, 0] = shapes[s, 4] * dx + shapes[s, 5] * dy + shapes[s, 6] * dz
        q0[s, 1] = shapes[s, 7] * dx + shapes[s, 8] * dy + shapes[s, 9] * dz
        q0[s, 2] = shapes[s, 10] * dx + shapes[s, 11] * dy + shapes[s, 12] * dz
    n_sub = subpixels * subpixels
    for row in nb.prange(nrows):
        lo_cache = np.empty(nshapes)
        hi_cache = np.empty(nshapes)
        stamp = -np.ones(nshapes, np.int64)
        ex_lo = np.empty(excludes.shape[1])
        ex_hi = np.empty(excludes.shape[1])
        for col in range(ncols):
            tile = (row // TILE) * ntc + col // TILE
            candidates = items[offsets[tile] : offsets[tile + 1]]
            if candidates.size == 0:
                out[row, col] = 0.0
                continue
            transmitted = 0.0
            integral = 0.0
            for sub in range(n_sub):
                fr = row + ((sub // subpixels) + 0.5) / subpixels - 0.5
                fc = col + ((sub % subpixels) + 0.5) / subpixels - 0.5
                dx = origin[0] + fc * col_step[0] + fr * row_step[0] - sx
                dy = origin[1] + fc * col_step[1] + fr * row_step[1] - sy
                dz = origin[2] + fc * col_step[2] + fr * row_step[2] - sz
                integral = _ray_integral(
                    sx, sy, sz, dx, dy, dz, q0, shapes, density, includes, excludes, spheres,
                    candidates, lo_cache, hi_cache, stamp, col * n_sub + sub, ex_lo, ex_hi,
                )  # fmt: skip
                transmitted += np.exp(-integral)
            out[row, col] = integral if n_sub == 1 else -np.log(transmitted / n_sub)


@nb.njit(parallel=True, cache=True)
def voxelize_into(out, origin, steps, supersample, shapes, density, includes, excludes, spheres):
    """Add the phantom's mean attenuation per voxel (1/mm) into ``out`` (slice, row, col).

    Voxel ``(k, i, j)`` is centred at ``origin + k * steps[0] + i * steps[1] + j * steps[2]``
    (mutually orthogonal steps, world mm); each voxel averages ``supersample**3`` point samples.
    """
    nk, ni, nj = out.shape
    ss = supersample
    norm = 1.0 / (ss * ss * ss)
    lens = np.empty(3)
    for a in range(3):
        lens[a] = np.sqrt(steps[a, 0] ** 2 + steps[a, 1] ** 2 + steps[a, 2] ** 2)
    for t in range(density.shape[0]):
        lo_idx = np.empty(3, np.int64)
        hi_idx = np.empty(3, np.int64)
        dims = (nk, ni, nj)
        for a in range(3):
            rel = 0.0
            for c in range(3):
                rel += (spheres[t, c] - origin[c]) * steps[a, c]
            centre = rel / (lens[a] * lens[a])
            half = spheres[t, 3] / lens[a] + 1.0
            lo_idx[a] = max(0, int(np.floor(centre - half)))
            hi_idx[a] = min(dims[a], int(np.ceil(centre + half)) + 1)
        if lo_idx[0] >= hi_idx[0] or lo_idx[1] >= hi_idx[1] or lo_idx[2] >= hi_idx[2]:
            continue
        dens = density[t]
        for k in nb.prange(lo_idx[0], hi_idx[0]):
            for i in range(lo_idx[1], hi_idx[1]):
                for j in range(lo_idx[2], hi_idx[2]):
                    count = 0
                    for a in range(ss):
                        fk = k + (a + 0.5) / ss - 0.5
                        for b in range(ss):
                            fi = i + (b + 0.5) / ss - 0.5
                            for c in range(ss):
                                fj = j + (c + 0.5) / ss - 0.5
                                px = (
                                    origin[0]
                                    + fk * steps[0, 0]
                                    + fi * steps[1, 0]
                                    + fj * steps[2, 0]
                                )
                                py = (
                                    origin[1]
                                    + fk * steps[0, 1]
                                    + fi * steps[1, 1]
                                    + fj * steps[2, 1]
                                )
                                pz = (
                                    origin[2]
                                    + fk * steps[0, 2]
                                    + fi * steps[1, 2]
                                    + fj * steps[2, 2]
                                )
                                hit = True
                                for m in range(includes.shape[1]):
                                    sid = includes[t, m]
                                    if sid >= 0 and not _inside(shapes[sid], px, py, pz):
                                        hit = False
                                        break
                                if hit:
                                    for m in range(excludes.shape[1]):
                                        sid = excludes[t, m]
                                        if sid >= 0 and _inside(shapes[sid], px, py, pz):
                                            hit = False
                                            break
                                if hit:
                                    count += 1
                    if count:
                        out[k, i, j] += dens * count * norm
