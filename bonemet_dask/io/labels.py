"""OME-Zarr 0.5 labels of a scan group: seg_ct bone masks and roi_ct composites.

A label image is its own multiscale image group under the scan group's ``labels/`` group
(``{scan}/labels/{name}`` with array ``0`` on the image's grid), listed in ``labels/``'s
``ome.labels`` and carrying ``ome.image-label``: one RGBA colour and a name per label value, and
``source.image = "../../"`` (the scan image).  napari (napari-ome-zarr) and ome-zarr-py then show
it as a Labels layer over the image in these colours.

The arrays are written by the stages like any array of the group (one writer per shard, see
:func:`bonemet_dask.io.store.write_scan_shard`): a stage names the label array
``label_array_path(name)`` among its extras with an ``"image_label"`` entry
(:func:`label_extra`), and :func:`bonemet_dask.io.store.create_image_group` makes the groups and
their metadata (:func:`ensure_label_groups`).

- ``seg_ct``: the bone mask *is* the label image ``labels/mask`` (not a copy; no root-level
  ``mask`` array any more).  :func:`mask_array` finds it, and a store written before labels
  (root-level ``mask``) too; :func:`~bonemet_dask.io.xr.open_store` still shows it as the
  Dataset variable ``mask``.
- ``roi_ct``: the composite stays image ``0`` (what metrics, previews and the published RoI-CT
  layout read) and is copied to ``labels/composite`` (small: the RoI is 300 slices).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

import zarr

from bonemet_dask.kernels.composite import FORMED, KEPT, RESORBED

__all__ = [
    "COMPOSITE_LABEL",
    "COMPOSITE_LABEL_COLOURS",
    "LABELS_GROUP",
    "MASK_LABEL",
    "MASK_LABEL_COLOURS",
    "ensure_label_groups",
    "label_array_path",
    "label_arrays",
    "label_extra",
    "label_names",
    "label_variables",
    "mask_array",
]

logger = logging.getLogger(__name__)

LABELS_GROUP: Final = "labels"
"""Name of the OME-Zarr ``labels`` group inside a scan group."""
MASK_LABEL: Final = "mask"
"""Label image of a ``seg_ct`` group: 1 = bone of this tibia and fibula."""
COMPOSITE_LABEL: Final = "composite"
"""Label image of a ``roi_ct`` group: the four-level composite (a copy of image ``0``)."""

COMPOSITE_LABEL_COLOURS: Final[dict[int, tuple[str, tuple[int, int, int, int]]]] = {
    KEPT: ("kept", (0xD9, 0xD9, 0xD9, 255)),
    FORMED: ("formed", (0x1A, 0x98, 0x50, 255)),
    RESORBED: ("resorbed", (0xD7, 0x30, 0x27, 255)),
}
"""Name and RGBA of each composite code (0, no bone, is transparent): the colours of
:data:`bonemet_dask.preview.COMPOSITE_COLOURS` (kept light grey, formed green, resorbed red);
the published RoI-CT PNGs hold the grey levels 180 / 240 / 60 themselves."""
MASK_LABEL_COLOURS: Final[dict[int, tuple[str, tuple[int, int, int, int]]]] = {
    1: ("bone", (0xF0, 0xE4, 0x42, 160)),
}
"""Name and RGBA of the bone mask's value 1 (semi-transparent yellow over the grey image)."""


def label_array_path(name: str) -> str:
    """Path of label image ``name``'s full-resolution array inside a scan group."""
    return f"{LABELS_GROUP}/{name}/0"


def image_label_attrs(
    colours: Mapping[int, tuple[str, tuple[int, int, int, int]]],
) -> dict[str, Any]:
    """The ``image-label`` object: colours and names per label value, source ``../../``.

    Parameters
    ----------
    colours : mapping of int to (str, 4-tuple of int)
        Label value -> (name, RGBA in 0..255).
    """
    return {
        "version": "0.5",
        "colors": [{"label-value": int(v), "rgba": [int(c) for c in rgba]}
                   for v, (_, rgba) in sorted(colours.items())],
        "properties": [{"label-value": int(v), "name": name}
                       for v, (name, _) in sorted(colours.items())],
        "source": {"image": "../../"},
    }  # fmt: skip


def label_extra(
    colours: Mapping[int, tuple[str, tuple[int, int, int, int]]],
    *,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``extras`` entry of :func:`~bonemet_dask.io.store.create_image_group` for a label.

    Parameters
    ----------
    colours : mapping
        As :func:`image_label_attrs`.
    attributes : mapping, optional
        Attributes of the label's array ``0``.

    Returns
    -------
    dict
        ``{"dtype": "uint8", "attributes": ..., "image_label": ...}``; use it under the key
        :func:`label_array_path` ``(name)``.
    """
    return {
        "dtype": "uint8",
        "attributes": dict(attributes or {}),
        "image_label": image_label_attrs(colours),
    }


def label_names(extras: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """Names of the label images among a group's extras (keys ``labels/{name}/0``)."""
    names = []
    for key, extra in (extras or {}).items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == LABELS_GROUP and parts[2] == "0":
            if "image_label" not in extra:
                raise ValueError(
                    f"extras[{key!r}] lacks 'image_label'; build it with labels.label_extra()"
                )
            names.append(parts[1])
    return names


def ensure_label_groups(
    group: zarr.Group,
    multiscale: Mapping[str, Any],
    extras: Mapping[str, Mapping[str, Any]] | None,
) -> list[str]:
    """Create ``labels/`` and one label image group per label extra, before their arrays.

    Idempotent: existing label groups are kept as they are (a pyramid may have added levels
    to their multiscales); the ``labels`` list gains missing names.

    Parameters
    ----------
    group : zarr.Group
        The scan group.
    multiscale : mapping
        The scan image's single-level ``ome.multiscales[0]`` (axes and the scale of dataset
        ``0``), reused for each label image (same grid), named ``{scan path}/labels/{name}``.
    extras : mapping, optional
        The group's extras; the entries at :func:`label_array_path` are labels.

    Returns
    -------
    list of str
        The label names.

    Raises
    ------
    bonemet_dask.io.store.StoreLayoutError
        If the group holds a root-level ``mask`` array (written before labels) but no
        ``labels/mask``: resuming it would lose the mask of its finished shards.
    """
    from bonemet_dask.io.store import StoreLayoutError

    names = label_names(extras)
    if not names:
        return names
    if MASK_LABEL in names and _legacy_mask(group) and label_array_path(MASK_LABEL) not in group:
        raise StoreLayoutError(
            f"group {group.path!r} holds its mask at 'mask' (written before OME labels); "
            "pass overwrite=True (--overwrite) to rewrite it with the mask as labels/mask"
        )
    labels = group.get(LABELS_GROUP)
    if not isinstance(labels, zarr.Group):
        empty = {"ome": {"version": "0.5", "labels": []}}
        labels = group.create_group(LABELS_GROUP, attributes=empty)
    listed = list(labels.attrs.get("ome", {}).get("labels", []))
    missing = [name for name in names if name not in listed]
    if missing:
        labels.attrs.update({"ome": {"version": "0.5", "labels": listed + missing}})
    for name in names:
        ome = {
            "version": "0.5",
            "multiscales": [{**dict(multiscale), "name": f"{group.path}/{LABELS_GROUP}/{name}"}],
            "image-label": extras[label_array_path(name)]["image_label"],  # type: ignore[index]
        }
        if not isinstance(labels.get(name), zarr.Group):  # an existing one is kept as it is
            labels.create_group(name, attributes={"ome": ome})
    logger.debug("labels of %s: %s", group.path, names)
    return names


def _legacy_mask(group: zarr.Group) -> bool:
    return isinstance(group.get(MASK_LABEL), zarr.Array)


def mask_array(group: zarr.Group) -> zarr.Array:
    """The bone mask of a ``seg_ct`` group: ``labels/mask/0``, or ``mask`` of older stores.

    Raises
    ------
    KeyError
        If the group has neither (not a segmentation); the message names the group.
    """
    for path in (label_array_path(MASK_LABEL), MASK_LABEL):
        node = group.get(path)
        if isinstance(node, zarr.Array):
            return node
    raise KeyError(
        f"group {group.path!r} has no mask (neither {label_array_path(MASK_LABEL)!r} nor "
        f"{MASK_LABEL!r}); pass a seg_ct group written by the segment stage"
    )


def label_variables(
    members: Mapping[str, Any], path: str, image: zarr.Array
) -> dict[str, zarr.Array]:
    """Label arrays of scan group ``path`` to show beside its image, from a metadata walk.

    Parameters
    ----------
    members : mapping
        ``{relative path: node}`` of the store or of the group (as
        ``zarr.Group.members(max_depth=None)`` gives); ``path`` is the scan group's key in it
        (``""`` when ``members`` is the group's own).
    path : str
        The scan group.
    image : zarr.Array
        Its array ``0``: only labels on the same grid are returned.

    Returns
    -------
    dict
        Label name -> array ``labels/{name}/0``, leaving out copies of ``0`` (the roi_ct
        composite: attribute ``bonemet.copy_of``).
    """
    prefix = f"{path}/{LABELS_GROUP}" if path else LABELS_GROUP
    labels = members.get(prefix)
    if not isinstance(labels, zarr.Group):
        return {}
    out = {}
    for name in labels.attrs.get("ome", {}).get("labels", []):
        array = members.get(f"{prefix}/{name}/0")
        if (
            isinstance(array, zarr.Array)
            and array.shape == image.shape
            and array.metadata.dimension_names == image.metadata.dimension_names
            and "copy_of" not in array.attrs.get("bonemet", {})
        ):
            out[name] = array
    return out


def label_arrays(group: zarr.Group, names: Iterable[str] | None = None) -> dict[str, zarr.Array]:
    """The full-resolution arrays of a scan group's label images, by label name.

    Parameters
    ----------
    group : zarr.Group
        A scan group.
    names : iterable of str, optional
        Only these labels (default: every name in ``labels/``'s ``ome.labels``).
    """
    labels = group.get(LABELS_GROUP)
    if not isinstance(labels, zarr.Group):
        return {}
    listed = labels.attrs.get("ome", {}).get("labels", [])
    wanted = listed if names is None else [n for n in names if n in listed]
    out = {}
    for name in wanted:
        node = labels.get(f"{name}/0")
        if isinstance(node, zarr.Array):
            out[name] = node
    return out
