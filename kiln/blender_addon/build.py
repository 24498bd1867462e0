"""`kiln blender-addon -o FILE`: the installable zip of the add-on in `kiln_blender/`.

One zip serves both installers: a top-level `kiln_blender/` folder (what Blender's legacy
"Install from Disk" of an add-on expects) holding `blender_manifest.toml` (what a Blender 4.2+
extension install reads). Blender Asset Tracer, which the add-on packs scenes with, goes in as a
pure-Python wheel made from the installed distribution (Kiln's `render` extra pins it): the
manifest lists it, so an extension install puts it in Blender's Python; a legacy install imports
it from the wheel file. The entries are sorted and timestamped alike, so the same sources give
the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import re
import zipfile
from pathlib import Path, PurePosixPath

ADDON_MODULE = "kiln_blender"
SOURCE = Path(__file__).parent / ADDON_MODULE
BAT_DISTRIBUTION = "blender-asset-tracer"
BAT_PACKAGE = "blender_asset_tracer"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_DIST_INFO_FILES = ("METADATA", "WHEEL")


class AddonBuildError(RuntimeError):
    """The zip cannot be built; the message says why."""


def build_addon(output: Path) -> list[str]:
    """Write the add-on zip to `output`; returns its entry names."""
    wheel_name, wheel = bat_wheel()
    entries: dict[str, bytes] = {}
    for path in sorted(SOURCE.rglob("*")):
        relative = path.relative_to(SOURCE)
        if path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        entries[f"{ADDON_MODULE}/{relative.as_posix()}"] = path.read_bytes()
    manifest = f"{ADDON_MODULE}/blender_manifest.toml"
    text, count = re.subn(r"(?m)^wheels = \[\]$", f'wheels = ["./wheels/{wheel_name}"]', entries[manifest].decode())
    if count != 1:
        raise AddonBuildError(f"{manifest} lacks the `wheels = []` line the build fills in")
    entries[manifest] = text.encode()
    entries[f"{ADDON_MODULE}/wheels/{wheel_name}"] = wheel
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(entries):
            archive.writestr(_entry(name), entries[name])
    partial.replace(output)
    return sorted(entries)


def bat_wheel() -> tuple[str, bytes]:
    """(file name, bytes) of a wheel of the installed Blender Asset Tracer (pure Python)."""
    try:
        distribution = importlib.metadata.distribution(BAT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise AddonBuildError(
            "Blender Asset Tracer is not installed here: the add-on ships it to pack scenes; "
            "install Kiln's render extra (pip install 'kiln-batch[render]')"
        ) from None
    version = distribution.version
    dist_info = f"{BAT_PACKAGE}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for file in distribution.files or []:
        parts = PurePosixPath(str(file)).parts
        code = parts[:1] == (BAT_PACKAGE,) and "__pycache__" not in parts and not str(file).endswith(".pyc")
        metadata = parts[:1] == (dist_info,) and (parts[-1] in _DIST_INFO_FILES or "licenses" in parts)
        if code or metadata:
            files[str(file)] = Path(str(file.locate())).read_bytes()
    if f"{BAT_PACKAGE}/__init__.py" not in files:
        raise AddonBuildError(f"the installed {BAT_DISTRIBUTION} {version} has no {BAT_PACKAGE} package files")
    record = "".join(f"{name},sha256={_digest(data)},{len(data)}\n" for name, data in sorted(files.items()))
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name in sorted(files):
            wheel.writestr(_entry(name), files[name])
    return f"{BAT_PACKAGE}-{version}-py3-none-any.whl", buffer.getvalue()


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.create_system = 3
    info.external_attr = 0o100644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info
