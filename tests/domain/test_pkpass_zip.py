"""The .pkpass zip written from prebuilt entries reads back with zipfile, file for file."""

from __future__ import annotations

import io
import zipfile

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
