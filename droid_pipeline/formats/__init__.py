"""File formats: lossless FFV1 depth, intrinsics.json, DROID's published calibration files, fast npz."""
