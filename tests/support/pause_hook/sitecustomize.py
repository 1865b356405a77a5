"""Test hook, on PYTHONPATH only in the tests that ask for it (fifo_episodes.pausing_env): a
process about to open the input file $DROID_TEST_PAUSE_AT first opens the FIFO
$DROID_TEST_PAUSE_FIFO for reading, and so blocks right there until the test, the FIFO's writer,
has done what it wanted with it (killed it). The pipeline itself refuses FIFOs as input files, so
a test can no longer put one where an input was."""

import os

if os.environ.get("DROID_TEST_PAUSE_AT"):
    import droid_pipeline.core.files as _files

    _target = os.environ["DROID_TEST_PAUSE_AT"]
    _fifo = os.environ["DROID_TEST_PAUSE_FIFO"]
    _check, _read = _files.check_input_file, _files.read_bytes_capped

    def _pause(path):
        if os.path.abspath(os.fspath(path)) == _target:
            with open(_fifo, "rb") as fifo:
                fifo.read()

    def _checked(path, max_bytes=_files.MAX_BINARY_BYTES):
        _pause(path)
        return _check(path, max_bytes)

    def _read_capped(path, max_bytes):
        _pause(path)
        return _read(path, max_bytes)

    _files.check_input_file = _checked
    _files.read_bytes_capped = _read_capped
