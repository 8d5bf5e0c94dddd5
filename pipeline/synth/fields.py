"""Low-resolution fields: linear upsampling, and the deformation of a stationary velocity field (SVF).

Grid convention (neuron's ``Resize``, used by lab2im): node k of a grid of n_grid nodes sits at
full-resolution voxel k·n_full/n_grid; a voxel p reads the grid at p·n_grid/n_full, clamped to the
grid (border values beyond the last node).

Every value here is computed per output point by operations that do not depend on which other points
are computed (gathers, elementwise arithmetic in a fixed order, and ``grid_sample``, whose 2D CPU kernel
runs the same vector code on the partial vector at the end of a row): a voxel's value is bit-identical in
a slab, in the whole volume, or in a batch of any size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Shape3 = tuple[int, int, int]
Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _tensor(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def axis_weights(positions: np.ndarray, n_full: int, n_grid: int, device: torch.device | str) -> Weights:
    """Linear interpolation of a grid axis at full-resolution ``positions``: (i0, i1, w0, w1)."""
    t = np.clip(np.asarray(positions, dtype=np.float64) * n_grid / n_full, 0, n_grid - 1)
    i0 = np.minimum(np.floor(t), max(n_grid - 2, 0)).astype(np.int64)
    frac = (t - i0).astype(np.float32)
    return (
        _tensor(i0, device),
        _tensor(np.minimum(i0 + 1, n_grid - 1), device),
        _tensor(1 - frac, device),
        _tensor(frac, device),
    )


def lerp(field: torch.Tensor, dim: int, weights: Weights) -> torch.Tensor:
    i0, i1, w0, w1 = weights
    view = [1] * field.dim()
    view[dim] = -1
    return field.index_select(dim, i0) * w0.view(view) + field.index_select(dim, i1) * w1.view(view)


def sample_grid(
    field: torch.Tensor, shape: Shape3, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
) -> torch.Tensor:
    """Trilinear upsampling of ``field`` (B, C, gx, gy, gz) at the voxel grid xs × ys × zs of a volume of
    ``shape``. Returns (B, C, nz, nx, ny): z first, the layout of the slab (thin in z)."""
    gx, gy, gz = field.shape[2:]
    dev = field.device
    out = field.permute(0, 1, 4, 2, 3)  # (B, C, gz, gx, gy)
    out = lerp(out, 2, axis_weights(zs, shape[2], gz, dev))
    out = lerp(out, 4, axis_weights(ys, shape[1], gy, dev))
    return lerp(out, 3, axis_weights(xs, shape[0], gx, dev))


def velocity_at(velocity: torch.Tensor, shape: Shape3, points: torch.Tensor) -> torch.Tensor:
    """Velocity (B, 3, *grid), trilinearly interpolated, at full-resolution ``points`` (B, 3, N)."""
    grid = velocity.shape[2:]
    # align_corners: node k at -1 + 2k/(g-1); an axis of one node reads it whatever the coordinate
    scale = [2 * g / (n * (g - 1)) if g > 1 else 0.0 for g, n in zip(grid, shape, strict=True)]
    where = torch.stack(
        [points[:, axis] * scale[axis] - 1 for axis in (2, 1, 0)], -1
    )  # (W, H, D) = (z, y, x)
    out = F.grid_sample(velocity, where[:, None, None], "bilinear", "border", align_corners=True)
    return out.view(points.shape)


def _atlas(field: torch.Tensor) -> torch.Tensor:
    """(B, C, gx, gy, gz) → (B, C, gz·gx, gy): the z-planes side by side, for 2D bilinear sampling."""
    batch, channels, gx, gy, gz = field.shape
    return field.permute(0, 1, 4, 2, 3).reshape(batch, channels, gz * gx, gy)


def _trilinear(atlas: torch.Tensor, grid: Shape3, points: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation at ``points`` (B, 3, N) in grid units, clamped to the grid: (B, C, N).

    Two bilinear samples (planes k and k+1 of the atlas) and a lerp in z: CPU grid_sample is vectorised in
    2D only, ~4× faster per point than its 3D kernel. A point on a plane's last row reads the next plane's
    first row with weight exactly 0.
    """
    gx, gy, gz = grid
    x, y, z = points[:, 0].clamp(0, gx - 1), points[:, 1].clamp(0, gy - 1), points[:, 2].clamp(0, gz - 1)
    plane = z.floor().clamp_(max=max(gz - 2, 0))
    row = plane * gx + x
    h_scale = 2 / (gz * gx - 1) if gz * gx > 1 else 0.0
    w = y * (2 / (gy - 1) if gy > 1 else 0.0) - 1
    lower = torch.stack([w, row * h_scale - 1], -1)
    upper = torch.stack([w, (row + (gx if gz > 1 else 0)) * h_scale - 1], -1)
    where = torch.cat([lower, upper], 1).unsqueeze(1)  # (B, 1, 2N, 2)
    out = F.grid_sample(atlas, where, "bilinear", "border", align_corners=True).squeeze(2)
    n = points.shape[2]
    return out[..., :n] + (z - plane).unsqueeze(1) * (out[..., n:] - out[..., :n])


def flow_displacement(
    velocity: torch.Tensor,
    shape: Shape3,
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
    steps: int,
    unit: float,
) -> torch.Tensor:
    """Displacement (B, 3, nz, nx, ny) of the SVF's exponential at the voxel grid xs × ys × zs.

    exp(v) is the flow of v over unit time; lab2im computes it by scaling and squaring on a grid, we
    integrate each point's trajectory with ``steps`` RK4 steps, which needs the velocity only along the
    trajectories of the points we keep. ``unit``: see ``scaling_and_squaring`` (lab2im's is 2).
    Points move in velocity-grid units (node k at voxel k·n/g).
    """
    grid = tuple(velocity.shape[2:])
    dev = velocity.device
    scale = torch.tensor([g / n for g, n in zip(grid, shape, strict=True)], device=dev).view(1, 3, 1)
    field = velocity * scale.view(1, 3, 1, 1, 1)  # grid units per unit time
    atlas = _atlas(field)
    start = sample_grid(field, shape, xs, ys, zs)  # at the grid nodes: separable, cheap
    batch, _, nz, nx, ny = start.shape
    mesh = torch.meshgrid(*(_tensor(a.astype(np.float32), dev) for a in (zs, xs, ys)), indexing="ij")
    origin = torch.stack([mesh[1], mesh[2], mesh[0]]).reshape(1, 3, -1) * scale
    point = origin
    h = unit / steps
    for step in range(steps):
        k1 = start.reshape(batch, 3, -1) if step == 0 else _trilinear(atlas, grid, point)
        k2 = _trilinear(atlas, grid, point + (h / 2) * k1)
        k3 = _trilinear(atlas, grid, point + (h / 2) * k2)
        k4 = _trilinear(atlas, grid, point + h * k3)
        point = point + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return ((point - origin) / (scale * unit)).view(batch, 3, nz, nx, ny)


def scaling_and_squaring(
    velocity: torch.Tensor, shape: Shape3, grid: Shape3, steps: int = 7, unit: float = 2.0
) -> torch.Tensor:
    """lab2im's integration, for reference: displacement (B, 3, *grid), in voxels of ``shape``.

    lab2im upsamples the velocity to a half-resolution grid, integrates it there by scaling and squaring
    reading the field as half-resolution voxels, then uses the result unchanged as full-resolution voxels:
    displacement = exp(unit·v) / unit in full-resolution voxels, unit = 2.
    """
    nodes = [np.arange(g) * n / g for g, n in zip(grid, shape, strict=True)]
    field = sample_grid(velocity, shape, *nodes).permute(0, 1, 3, 4, 2).contiguous() * (unit / 2**steps)
    mesh = torch.meshgrid(*(_tensor(a.astype(np.float32), velocity.device) for a in nodes), indexing="ij")
    points = torch.stack(mesh).reshape(1, 3, -1)
    batch = field.shape[0]
    for _ in range(steps):
        flat = field.reshape(batch, 3, -1)
        field = (flat + velocity_at(field, shape, points + flat)).reshape(field.shape)
    return field / unit
