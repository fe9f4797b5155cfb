# Fuzz targets (owned by the fuzzing work; filled in there).
