"""Pixels: decoding Pixel Data into arrays and writing stacks as OME-Zarr."""
