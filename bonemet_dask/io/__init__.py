"""Reading the BoneMet source tree: PNG headers, SkyScan ``.log`` files and the source catalog.

Modules
-------
png_header
    IHDR parsing without decoding, batched header reads through fsspec.
skyscan_log
    Tolerant parser and byte-exact writer of SkyScan/NRecon ``.log`` files.
skyscan_check
    Are a ``.log``'s values physical? Each bad one named with its file, key, value and fix.
records_csv, records_schema
    MiceMediRec ``record.csv`` as Excel saves it (cp1252, semicolons, hand-edited headers) and
    the checks of its cells; every problem as data, never an exception.
records
    ``/medirec`` in the store: the records as typed column arrays, with their problems.
catalog
    :func:`~bonemet_dask.io.catalog.scan_source`: one listing walk that finds every image stack
    (data model here; the walk and per-stack checks in the private ``_catalog_walk``).
catalog_report
    Rich tables of a catalog for ``bonemet-dask plan``.
"""
