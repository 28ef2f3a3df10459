"""Series assembly: split a series into stacks, order slices, compute spacing, affine and QC.

Pure computation on header values (no pixels), so it is testable on its own.
Coordinates are DICOM patient coordinates (LPS, millimetres). The affine maps
an index ``(z, y, x)`` = (slice, row, column) to LPS: ``p = A @ [z, y, x, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ORIENTATION_DECIMALS = 4
GAP_FACTOR = 1.5
UNEVEN_TOLERANCE = 0.01
TILT_TOLERANCE_DEGREES = 0.1


@dataclass(frozen=True)
class SliceInfo:
    """The header facts of one instance that decide which stack it joins and where."""

    index: int  # position of the instance in the batch
    sop_instance_uid: str | None
    rows: int
    columns: int
    samples: int
    frames: int
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    acquisition: Any = None
    echo: Any = None
    temporal: Any = None
    localizer: bool = False
    instance_number: int | None = None
    spacing_between_slices: float | None = None
    slice_thickness: float | None = None
    # Enhanced multi-frame: one position per frame (from the functional groups).
    frame_positions: tuple[tuple[float, ...], ...] | None = None


@dataclass
class Stack:
    """Instances that form one volume, in slice order, with their geometry and QC flags."""

    slices: list[SliceInfo]
    spacing: tuple[float, float, float]  # (z, y, x) in mm
    affine: np.ndarray  # 4x4, LPS, index order (z, y, x)
    qc_flags: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.slices)

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.slices[0]
        base = (self.frames, first.rows, first.columns)
        return (*base, first.samples) if first.samples > 1 else base


def _stack_key(info: SliceInfo) -> tuple[Any, ...]:
    orientation = (
        tuple(round(v, ORIENTATION_DECIMALS) for v in info.orientation)
        if info.orientation
        else None
    )
    # Multi-frame instances are volumes of their own.
    own = info.index if info.frames > 1 else None
    return (
        info.rows,
        info.columns,
        info.samples,
        orientation,
        info.acquisition,
        info.echo,
        info.temporal,
        info.localizer,
        own,
    )


def split_stacks(slices: Sequence[SliceInfo]) -> list[Stack]:
    """Group into stacks (size, orientation, acquisition, echo, time, localizer), then order."""
    groups: dict[tuple[Any, ...], list[SliceInfo]] = {}
    for info in slices:
        groups.setdefault(_stack_key(info), []).append(info)
    stacks = [assemble(group) for group in groups.values()]
    # Deterministic order: by the first slice's position in the batch.
    return sorted(stacks, key=lambda s: min(i.index for i in s.slices))


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.array(orientation[:3], float), np.array(orientation[3:6], float)
    return np.cross(row, col)


def assemble(group: Sequence[SliceInfo]) -> Stack:
    """Order one stack along its normal and derive spacing, affine and QC flags."""
    first = group[0]
    flags: list[str] = [] if first.pixel_spacing else ["missing_pixel_spacing"]
    geometric = all(s.orientation and s.position and len(s.orientation) == 6 for s in group)
    if not geometric:
        flags.append("missing_geometry")
        ordered = sorted(group, key=lambda s: (s.instance_number or 0, s.index))
        return Stack(ordered, (1.0, *_pixel_spacing(first)), _affine_without_geometry(first), flags)
    normal = _normal(first.orientation)  # type: ignore[arg-type]
    ordered = sorted(group, key=lambda s: (float(np.dot(np.asarray(s.position), normal)), s.index))
    if len(ordered) == 1 and first.frame_positions and len(first.frame_positions) > 1:
        # One multi-frame instance: frames stay in stored order; positions come per frame.
        depths = np.array([np.dot(p, normal) for p in first.frame_positions])
        if np.all(np.diff(depths) < 0):
            depths = -depths
            normal = -normal
        z_spacing = _slice_spacing(depths, first, flags)
        spacing = (z_spacing, *_pixel_spacing(first))
        affine = _affine(first.orientation, first.frame_positions[0], spacing)  # type: ignore[arg-type]
        affine[:3, 0] = normal * z_spacing
        return Stack(ordered, spacing, affine, flags)
    depths = np.array([np.dot(np.asarray(s.position), normal) for s in ordered])
    z_spacing = _slice_spacing(depths, first, flags)
    if len(ordered) > 1:
        step = np.array(ordered[-1].position) - np.array(ordered[0].position)
        if np.linalg.norm(step) > 0:
            cos = abs(float(np.dot(step / np.linalg.norm(step), normal)))
            if math.degrees(math.acos(min(1.0, cos))) > TILT_TOLERANCE_DEGREES:
                flags.append("gantry_tilt")
    spacing = (z_spacing, *_pixel_spacing(first))
    affine = _affine(first.orientation, ordered[0].position, spacing)  # type: ignore[arg-type]
    if len(ordered) > 1 and "gantry_tilt" in flags:
        # Use the real slice step (sheared volume) so positions stay exact.
        affine[:3, 0] = (np.array(ordered[-1].position) - np.array(ordered[0].position)) / (
            len(ordered) - 1
        )
    return Stack(ordered, spacing, affine, flags)


def _pixel_spacing(info: SliceInfo) -> tuple[float, float]:
    return info.pixel_spacing if info.pixel_spacing else (1.0, 1.0)


def _slice_spacing(depths: np.ndarray, first: SliceInfo, flags: list[str]) -> float:
    if len(depths) < 2:
        return float(first.spacing_between_slices or first.slice_thickness or 1.0)
    steps = np.diff(depths)
    if np.any(np.abs(steps) < 1e-3):
        flags.append("duplicate_positions")
    positive = steps[np.abs(steps) >= 1e-3]
    if positive.size == 0:
        return float(first.slice_thickness or 1.0)
    median = float(np.median(positive))
    if np.any(positive > GAP_FACTOR * median):
        flags.append("gaps")
    if float(np.max(positive) - np.min(positive)) > UNEVEN_TOLERANCE * median:
        flags.append("uneven_spacing")
    return median


def _affine(
    orientation: Sequence[float], origin: Sequence[float], spacing: tuple[float, float, float]
) -> np.ndarray:
    row, col = np.array(orientation[:3], float), np.array(orientation[3:6], float)
    normal = np.cross(row, col)
    affine = np.eye(4)
    affine[:3, 0] = normal * spacing[0]  # z: slice index
    affine[:3, 1] = col * spacing[1]  # y: row index moves along the column direction
    affine[:3, 2] = row * spacing[2]  # x: column index moves along the row direction
    affine[:3, 3] = np.array(origin, float)
    return affine


def _affine_without_geometry(info: SliceInfo) -> np.ndarray:
    dy, dx = _pixel_spacing(info)
    return np.diag([1.0, dy, dx, 1.0])
