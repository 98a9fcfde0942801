"""Data layer: DATA_DIR layout, split CSVs, NIfTI validation, preprocessing, cache, TFDS and grain pipelines, demo cohort."""
