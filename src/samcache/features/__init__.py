"""Frozen SAM image-encoder features and SLIC superpixels, computed once into Zarr caches."""
