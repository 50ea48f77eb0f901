"""CDS zips: the new CDS returns one when a request mixes instantaneous and accumulated fields.

Members (netCDF or GRIB, one per stream and step type) are unpacked once into a hidden folder
beside the zip (or under ``unpack_dir``) and reused while the zip's manifest (names, sizes,
CRCs) is unchanged; each member is then read by the source of its own format.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ingest.atomic import atomic_output
from ingest.errors import SourceLayoutError, TruncatedFileError
from ingest.source import Layout, RawDataset, RawSource

_MANIFEST = "MANIFEST.json"


class ZipSource(RawSource):
    """A CDS zip of netCDF (or GRIB) members.

    Parameters
    ----------
    path : pathlib.Path
        The zip.
    unpack_dir : path-like, optional
        Where members are unpacked; default a hidden folder ``.NAME.zip.unpacked`` beside the zip.
    """

    layout = Layout.CDS_ZIP

    def __init__(self, path: Path, unpack_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.target = (
            Path(unpack_dir) / f"{self.path.name}.unpacked"
            if unpack_dir
            else self.path.with_name(f".{self.path.name}.unpacked")
        )

    def _open_raw(self) -> list[RawDataset]:
        from ingest.formats import file_source  # members are files of any format

        manifest = self._unpacked()
        if not manifest:
            raise SourceLayoutError(f"{self.path}: expected netCDF or GRIB members in the zip, found none")
        return [
            RawDataset(f"{self.path}::{member}", Layout.CDS_ZIP, raw.raw)
            for member in sorted(manifest)
            for raw in file_source(self.target / Path(member).name).raw()
        ]

    def _unpacked(self) -> dict[str, list[int]]:
        """Unpack the members unless an identical unpacking is there; returns the zip's manifest."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                manifest = zip_manifest(archive)
                if not unpacked_matches(self.target, manifest):
                    unpack(archive, self.target, manifest)
        except zipfile.BadZipFile as err:
            raise TruncatedFileError(
                f"{self.path}: expected a complete zip archive (as the CDS returns for mixed instantaneous "
                f"and accumulated fields); it cannot be read: {err} — an interrupted download?"
            ) from err
        return manifest


def zip_manifest(archive: zipfile.ZipFile) -> dict[str, list[int]]:
    """``{member name: [size, CRC-32]}`` of every file in the archive."""
    return {info.filename: [info.file_size, info.CRC] for info in archive.infolist() if not info.is_dir()}


def unpacked_matches(target: Path, manifest: dict[str, list[int]]) -> bool:
    """Whether ``target`` holds an unpacking of exactly this manifest, every member at its size."""
    record = target / _MANIFEST
    if not record.is_file() or json.loads(record.read_text()) != manifest:
        return False
    return all(
        (target / Path(m).name).is_file() and (target / Path(m).name).stat().st_size == size
        for m, (size, _) in manifest.items()
    )


def unpack(archive: zipfile.ZipFile, target: Path, manifest: dict[str, list[int]]) -> None:
    """Extract every member (flattened to its base name) into ``target``, atomically.

    Raises
    ------
    SourceLayoutError
        If two members share a base name (or one is called ``MANIFEST.json``).
    """
    names = [Path(m).name for m in manifest]
    if len(set(names)) != len(names) or _MANIFEST in names:
        raise SourceLayoutError(
            f"{archive.filename}: expected distinct member file names, found {sorted(manifest)}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        tmp.mkdir()
        for member in manifest:
            with archive.open(member) as src, open(tmp / Path(member).name, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        (tmp / _MANIFEST).write_text(json.dumps(manifest))
