"""Input files are checked before they are opened: special files and files over their cap are a
clear error, never a hang or an unbounded read (real FIFOs, sockets, devices and files)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from droid_pipeline.core.files import UnusableFile, check_input_file, read_bytes_capped, read_text_capped


def test_a_regular_file_within_its_cap_is_read(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a": 1}')
    assert check_input_file(path, 8) == 8
    assert read_text_capped(path, 8) == '{"a": 1}'


def test_a_fifo_is_refused_at_once_without_blocking(tmp_path):
    fifo = tmp_path / "metadata.json"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    reader = threading.Thread(target=lambda: result.append(_raised(lambda: read_text_capped(fifo, 100))), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], UnusableFile) and "is a FIFO (named pipe), not a regular file" in str(result[0])
    with pytest.raises(UnusableFile, match="FIFO"):
        check_input_file(fifo)


def test_a_symlink_to_an_endless_device_is_refused_without_reading(tmp_path):
    link = tmp_path / "metadata.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(UnusableFile, match="is a character device, not a regular file"):
        read_bytes_capped(link, 1 << 20)


def test_a_socket_and_a_directory_are_refused(tmp_path):
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(UnusableFile, match="is a socket"):
            check_input_file(path)
    with pytest.raises(UnusableFile, match="is a directory"):
        check_input_file(tmp_path)


def test_a_file_over_its_cap_is_refused_naming_size_and_cap(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 101)
    with pytest.raises(UnusableFile, match=r"holds 101 bytes, more than the 100 bytes"):
        read_text_capped(path, 100)
    with pytest.raises(UnusableFile, match="holds 101 bytes"):
        check_input_file(path, 100)


def test_unusable_file_is_an_os_error_that_names_the_path(tmp_path):
    fifo = tmp_path / "trajectory.h5"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=str(fifo)):
        check_input_file(fifo)


def _raised(function) -> BaseException | None:
    try:
        function()
    except BaseException as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    return None


def test_a_config_file_that_is_a_fifo_is_a_config_error(tmp_path):
    from droid_pipeline.core.config import ConfigError, load_config

    fifo = tmp_path / "site.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="cannot read config file: .*is a FIFO"):
        load_config([fifo])
