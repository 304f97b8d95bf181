"""Pure, Dask-free chunk kernels, one block in and one out (``png_decode``: PNG bytes to pixels)."""
