"""The .pkpass zip written from prebuilt entries reads back with zipfile, file for file."""

from __future__ import annotations

import io
import zipfile
import zlib

from passpush.domain.pkpass_zip import PNG_MAGIC, zip_archive, zip_entry

FILES = {
    "icon.png": PNG_MAGIC + bytes(range(256)) * 40,
    "pass.json": b'{"formatVersion": 1, "description": "' + b"x" * 3000 + b'"}',
    "en.lproj/pass.strings": '"greeting" = "Grüezi";'.encode(),
    "empty.txt": b"",
}


def test_an_archive_reads_back_whole_with_pngs_stored_and_the_rest_deflated() -> None:
    archive = zip_archive([zip_entry(name, data) for name, data in FILES.items()])
    with zipfile.ZipFile(io.BytesIO(archive)) as read:
        assert read.testzip() is None  # every CRC right
        assert [info.filename for info in read.infolist()] == list(FILES)
        assert {name: read.read(name) for name in FILES} == FILES
        methods = {info.filename: info.compress_type for info in read.infolist()}
        assert methods["icon.png"] == zipfile.ZIP_STORED
        assert methods["pass.json"] == zipfile.ZIP_DEFLATED
        assert read.getinfo("pass.json").compress_size < len(FILES["pass.json"]) / 10
        assert {info.date_time for info in read.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_the_same_files_give_the_same_bytes_and_entries_can_be_reused() -> None:
    entries = [zip_entry(name, data) for name, data in FILES.items()]
    assert zip_archive(entries) == zip_archive([zip_entry(n, d) for n, d in FILES.items()])
    # An entry kept from one archive is right in another, at another offset.
    second = zip_archive([zip_entry("first.json", b"{}"), *entries])
    with zipfile.ZipFile(io.BytesIO(second)) as read:
        assert read.testzip() is None
        assert read.read("icon.png") == FILES["icon.png"]


def test_text_of_any_size_deflates_as_small_as_with_the_full_window_and_reads_back() -> None:
    # The window is sized to the text (zlib's full one took longer to set up than a
    # pass.json to deflate): across each bound of its sizes, the same bytes come back.
    sizes = [0, 1, 255, 256, 257, 511, 512, 513, 1024, 1025, 40_000, 70_000]
    text = b"".join(b'"field%d": "value %d",\n' % (i, i * 7) for i in range(4_000))
    files = {f"f{size}.json": text[:size] for size in sizes}
    archive = zip_archive([zip_entry(name, data) for name, data in files.items()])
    with zipfile.ZipFile(io.BytesIO(archive)) as read:
        assert read.testzip() is None
        assert {name: read.read(name) for name in files} == files
        for name, data in files.items():
            full_window = len(zlib.compress(data, zlib.Z_DEFAULT_COMPRESSION, -15))
            assert read.getinfo(name).compress_size <= full_window
