"""Read a .blend file's scene frame range and frame rate without Blender.

Why: sizing an array job (how many render slices?) and naming the frames to stitch must not need
the 300 MB `bpy` wheel. A .blend file is a sequence of blocks that carries its own schema (the
SDNA, block `DNA1`), so the offsets of `Scene.r.sfra`, `Scene.r.efra`, ... are computed from the
file itself instead of being hard-coded for one Blender version: the same approach as the
workshop's submitter, extended to every layout a current Blender writes:

- the 12-byte header of Blender 2.x-4.x (4- or 8-byte pointers, either byte order) and the
  17-byte header of Blender >= 5.0 (`LargeBHead8` block headers);
- plain files, whole-file gzip (Blender < 3.0 "compress") and zstd (Blender >= 3.0 "compress").

The scene read is the one Blender opens as `bpy.context.scene`: `FileGlobal.curscene`, falling
back to the file's first scene. This module must never import `bpy`.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO, cast

import zstandard

from kiln.render.errors import BlendFileError
from kiln.render.uris import open_input

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLEND_MAGIC = b"BLENDER"
_SKIP_CHUNK = 1 << 20
_NUMBER_FORMATS = {
    "char": "b",
    "uchar": "B",
    "int8_t": "b",
    "uint8_t": "B",
    "short": "h",
    "ushort": "H",
    "int16_t": "h",
    "uint16_t": "H",
    "int": "i",
    "uint": "I",
    "int32_t": "i",
    "uint32_t": "I",
    "float": "f",
    "double": "d",
    "int64_t": "q",
    "uint64_t": "Q",
}


class FrameTimeline:
    """What any record of a scene's frame range and rate can answer (mixed into dataclasses)."""

    frame_start: int
    frame_end: int
    frame_step: int
    fps: int
    fps_base: float

    @property
    def frames(self) -> range:
        """The frame numbers Blender's animation render would produce."""
        return range(self.frame_start, self.frame_end + 1, self.frame_step)

    @property
    def frame_rate(self) -> Fraction:
        return frame_rate(self.fps, self.fps_base)


@dataclass(frozen=True)
class SceneInfo(FrameTimeline):
    """The active scene's render range and rate, as stored in the file."""

    name: str
    frame_start: int
    frame_end: int
    frame_step: int
    fps: int
    fps_base: float
    blender_version: int  # of the Blender that saved the file: 300 is 3.0, 405 is 4.5


def frame_rate(fps: int, fps_base: float) -> Fraction:
    """`fps / fps_base` as a fraction: 30 / 1.001 is 30000/1001, the NTSC rate video containers want.

    `fps_base` is a 32-bit float in the file (1.001 reads back as 1.00100004...), so it is rounded
    to 6 decimals before it becomes exact.
    """
    if fps <= 0 or fps_base <= 0:
        raise BlendFileError(f"the scene's frame rate {fps}/{fps_base} is not positive")
    return Fraction(fps) / Fraction(f"{fps_base:.6f}")


def read_scene_info(source: str | os.PathLike[str] | BinaryIO) -> SceneInfo:
    """Scene name, frame range, step and rate of the .blend at `source` (a URI, path or binary file)."""
    if isinstance(source, str | os.PathLike):
        with open_input(os.fspath(source)) as raw:
            return _read_scene_info(raw)
    return _read_scene_info(source)


def _read_scene_info(raw: BinaryIO) -> SceneInfo:
    try:
        with _decompressed(raw) as stream:
            layout = _read_layout(stream)
            blocks = _wanted_blocks(stream, layout)
    except (EOFError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile) as error:
        raise BlendFileError(f"damaged compressed .blend file ({error or type(error).__name__})") from None
    sdna = _Sdna.parse(blocks.dna, layout)
    scene = _active_scene(blocks, sdna, layout)
    read = _FieldReader(sdna, layout, scene.data, "Scene")
    name = read.bytes_of(("id", "name")).split(b"\0", 1)[0].decode("utf-8", "replace")
    return SceneInfo(
        name=name[2:],  # ID names start with their type code, "SC"
        frame_start=int(read.number(("r", "sfra"))),
        frame_end=int(read.number(("r", "efra"))),
        frame_step=max(1, int(read.number(("r", "frame_step")))),
        fps=int(read.number(("r", "frs_sec"))),
        fps_base=float(read.number(("r", "frs_sec_base"))),
        blender_version=layout.version,
    )


@contextmanager
def _decompressed(raw: BinaryIO) -> Iterator[BinaryIO]:
    """The file's bytes, whichever whole-file compression Blender applied."""
    head = _read_up_to(raw, 7)
    raw = _rewound(raw, head)
    if head.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield cast(BinaryIO, unzipped)
    elif head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        with reader:
            yield reader
    elif head == BLEND_MAGIC:
        yield raw
    else:
        raise BlendFileError("not a .blend file (no BLENDER header, and not gzip or zstd compressed)")


def _rewound(raw: BinaryIO, head: bytes) -> BinaryIO:
    if raw.seekable():
        raw.seek(0)
        return raw
    return io.BytesIO(head + raw.read())


@dataclass(frozen=True)
class _Layout:
    """What the file header says about every later structure."""

    version: int
    pointer_size: int
    endian: str  # struct prefix: "<" little, ">" big
    bhead: struct.Struct  # fields in the order: code, len, old, SDNAnr, nr (normalised below)
    large_bhead: bool


def _read_layout(stream: BinaryIO) -> _Layout:
    try:
        header = _read_exact(stream, 12)
        if header[:7] != BLEND_MAGIC:
            raise BlendFileError("not a .blend file (no BLENDER header after decompression)")
        marker = header[7:8]
        if marker in (b"_", b"-"):  # 12-byte header: pointer size, byte order, 3-digit version
            pointer_size = 4 if marker == b"_" else 8
            endian = {b"v": "<", b"V": ">"}[header[8:9]]
            version = int(header[9:12])
            fields = "4siIii" if pointer_size == 4 else "4siQii"
            return _Layout(version, pointer_size, endian, struct.Struct(endian + fields), large_bhead=False)
        header += _read_exact(stream, 5)  # 17-byte header (Blender >= 5.0): "BLENDER17-01v0500"
        if header[7:9] != b"17" or header[9:10] != b"-" or header[10:12] != b"01" or header[12:13] != b"v":
            raise BlendFileError(f"unsupported .blend header {header!r}")
        return _Layout(int(header[13:17]), 8, "<", struct.Struct("<4siQqq"), large_bhead=True)
    except (KeyError, ValueError) as error:
        raise BlendFileError(f"damaged .blend header ({error})") from None


@dataclass(frozen=True)
class _Block:
    code: bytes
    old_address: int
    sdna_index: int
    data: bytes


@dataclass
class _WantedBlocks:
    """The few blocks the scene range needs; everything else is skipped unread."""

    dna: bytes = b""
    globals: _Block | None = None
    scenes: list[_Block] = field(default_factory=list)


def _wanted_blocks(stream: BinaryIO, layout: _Layout) -> _WantedBlocks:
    wanted = _WantedBlocks()
    while True:
        raw_header = _read_up_to(stream, layout.bhead.size)
        if raw_header[:4] == b"ENDB":
            break
        if len(raw_header) < layout.bhead.size:
            raise BlendFileError("truncated .blend file (it ends without an ENDB block)")
        code, length, old, sdna_index = _unpack_bhead(layout, raw_header)
        if length < 0:
            raise BlendFileError("damaged .blend file (negative block length)")
        if code in (b"DNA1", b"GLOB", b"SC\0\0"):
            block = _Block(code, old, sdna_index, _read_exact(stream, length))
            if code == b"DNA1":
                wanted.dna = block.data
            elif code == b"GLOB":
                wanted.globals = block
            else:
                wanted.scenes.append(block)
        else:
            _skip(stream, length)
    if not wanted.dna:
        raise BlendFileError("damaged .blend file (no DNA1 schema block)")
    if not wanted.scenes:
        raise BlendFileError("the .blend file has no scene")
    return wanted


def _unpack_bhead(layout: _Layout, raw_header: bytes) -> tuple[bytes, int, int, int]:
    """(code, data length, old address, SDNA index) from either block header layout."""
    if layout.large_bhead:
        code, sdna_index, old, length, _count = layout.bhead.unpack(raw_header)
    else:
        code, length, old, sdna_index, _count = layout.bhead.unpack(raw_header)
    return code, length, old, sdna_index


@dataclass(frozen=True)
class _Member:
    type_name: str
    offset: int
    size: int
    is_pointer: bool


class _Sdna:
    """The file's own struct layouts: struct name -> member name -> where and what it is."""

    def __init__(self, structs: list[tuple[str, dict[str, _Member]]]) -> None:
        self.by_index = structs
        self.by_name = dict(structs)

    @classmethod
    def parse(cls, data: bytes, layout: _Layout) -> _Sdna:
        try:
            return cls(_parse_structs(data, layout))
        except (struct.error, IndexError, ValueError) as error:
            raise BlendFileError(f"damaged .blend schema (DNA1: {error})") from None

    def member(self, struct_name: str, member: str) -> _Member:
        try:
            return self.by_name[struct_name][member]
        except KeyError:
            raise BlendFileError(f"the .blend schema has no {struct_name}.{member}") from None


def _parse_structs(data: bytes, layout: _Layout) -> list[tuple[str, dict[str, _Member]]]:
    cursor = _Cursor(data, layout.endian)
    cursor.expect(b"SDNA")
    cursor.expect(b"NAME")
    names = cursor.strings(cursor.int32())
    cursor.align4()
    cursor.expect(b"TYPE")
    types = cursor.strings(cursor.int32())
    cursor.align4()
    cursor.expect(b"TLEN")
    type_sizes = [cursor.uint16() for _ in types]
    size_of = dict(zip(types, type_sizes, strict=True))
    cursor.align4()
    cursor.expect(b"STRC")
    structs = []
    for _ in range(cursor.int32()):
        type_index, member_count = cursor.uint16(), cursor.uint16()
        members: dict[str, _Member] = {}
        offset = 0
        for _ in range(member_count):
            member_type, member_name = types[cursor.uint16()], names[cursor.uint16()]
            is_pointer = member_name.startswith(("*", "("))
            element = layout.pointer_size if is_pointer else size_of[member_type]
            size = element * _array_length(member_name)
            members[_bare_name(member_name)] = _Member(member_type, offset, size, is_pointer)
            offset += size
        if offset != type_sizes[type_index]:
            raise ValueError(f"struct {types[type_index]} adds up to {offset}, not {type_sizes[type_index]} bytes")
        structs.append((types[type_index], members))
    return structs


def _bare_name(member_name: str) -> str:
    """`*next` -> next, `name[66]` -> name, `(*func)()` -> func."""
    return re.sub(r"[*()]", "", member_name.split("[", 1)[0])


def _array_length(member_name: str) -> int:
    length = 1
    for dimension in re.findall(r"\[(\d+)\]", member_name):
        length *= int(dimension)
    return length


class _Cursor:
    """Sequential reads through the DNA1 block."""

    def __init__(self, data: bytes, endian: str) -> None:
        self.data, self.endian, self.position = data, endian, 0

    def expect(self, tag: bytes) -> None:
        if self.data[self.position : self.position + 4] != tag:
            raise ValueError(f"expected {tag.decode()} at byte {self.position}")
        self.position += 4

    def int32(self) -> int:
        (value,) = struct.unpack_from(self.endian + "i", self.data, self.position)
        self.position += 4
        return int(value)

    def uint16(self) -> int:
        (value,) = struct.unpack_from(self.endian + "H", self.data, self.position)
        self.position += 2
        return int(value)

    def strings(self, count: int) -> list[str]:
        result = []
        for _ in range(count):
            end = self.data.index(b"\0", self.position)
            result.append(self.data[self.position : end].decode("ascii"))
            self.position = end + 1
        return result

    def align4(self) -> None:
        self.position = (self.position + 3) & ~3


def _active_scene(blocks: _WantedBlocks, sdna: _Sdna, layout: _Layout) -> _Block:
    """The scene saved as current (`FileGlobal.curscene`), else the first one in the file."""
    scenes = [block for block in blocks.scenes if _struct_name(sdna, block) == "Scene"]
    if not scenes:
        raise BlendFileError("the .blend file has no scene")
    if blocks.globals is not None and _struct_name(sdna, blocks.globals) == "FileGlobal":
        current = _FieldReader(sdna, layout, blocks.globals.data, "FileGlobal").pointer(("curscene",))
        for scene in scenes:
            if scene.old_address == current:
                return scene
    return scenes[0]


def _struct_name(sdna: _Sdna, block: _Block) -> str | None:
    if 0 <= block.sdna_index < len(sdna.by_index):
        return sdna.by_index[block.sdna_index][0]
    return None


class _FieldReader:
    """Values at a member path (`("r", "sfra")`) inside one struct's bytes."""

    def __init__(self, sdna: _Sdna, layout: _Layout, data: bytes, struct_name: str) -> None:
        self.sdna, self.layout, self.data, self.struct_name = sdna, layout, data, struct_name

    def _locate(self, path: tuple[str, ...]) -> _Member:
        struct_name, offset = self.struct_name, 0
        member = None
        for name in path:
            member = self.sdna.member(struct_name, name)
            offset += member.offset
            struct_name = member.type_name
        assert member is not None
        if offset + member.size > len(self.data):
            raise BlendFileError(f"damaged .blend file ({self.struct_name}.{'.'.join(path)} is out of its block)")
        return _Member(member.type_name, offset, member.size, member.is_pointer)

    def bytes_of(self, path: tuple[str, ...]) -> bytes:
        member = self._locate(path)
        return self.data[member.offset : member.offset + member.size]

    def number(self, path: tuple[str, ...]) -> int | float:
        member = self._locate(path)
        number_format = _NUMBER_FORMATS.get(member.type_name)
        if member.is_pointer or number_format is None:
            raise BlendFileError(f"{self.struct_name}.{'.'.join(path)} is not a number in this .blend file")
        (value,) = struct.unpack_from(self.layout.endian + number_format, self.data, member.offset)
        return value

    def pointer(self, path: tuple[str, ...]) -> int:
        member = self._locate(path)
        pointer_format = "I" if self.layout.pointer_size == 4 else "Q"
        (value,) = struct.unpack_from(self.layout.endian + pointer_format, self.data, member.offset)
        return int(value)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = stream.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = _read_up_to(stream, size)
    if len(data) < size:
        raise BlendFileError("truncated .blend file")
    return data


def _skip(stream: BinaryIO, size: int) -> None:
    """Move past a block's data; compressed streams can only do that by reading."""
    if stream.seekable():
        stream.seek(size, io.SEEK_CUR)
        return
    while size > 0:
        chunk = stream.read(min(size, _SKIP_CHUNK))
        if not chunk:
            raise BlendFileError("truncated .blend file")
        size -= len(chunk)
