"""File formats of the outputs: lossless FFV1 depth."""
