"""Reading the BoneMet source tree: PNG headers, SkyScan ``.log`` files and the source catalog.

Modules
-------
png_header
    IHDR parsing without decoding, batched header reads through fsspec.
skyscan_log
    Tolerant parser and byte-exact writer of SkyScan/NRecon ``.log`` files.
catalog
    :func:`~bonemet_dask.io.catalog.scan_source`: one listing walk that finds every image stack
    (data model here; the walk and per-stack checks in the private ``_catalog_walk``).
catalog_report
    Rich tables of a catalog for ``bonemet-dask plan``.
"""
