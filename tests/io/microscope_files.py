"""Microscope files with known content for the reader tests: CZI by pylibCZIrw's writer, OME-Zarr by
ome-zarr's writer, LIF by a minimal writer of the layout LAS X writes (no LIF writer is maintained).

Each writer takes ``(Z, C, Y, X)`` planes per scene and the pixel size and z-step in micrometres.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np


def write_czi(
    path: Path,
    scenes: list[np.ndarray],
    *,
    pixel_um: float,
    z_step_um: float,
    channel_names: list[str] | None = None,
    times: int = 1,
    compression: str | None = None,
) -> None:
    """A CZI of ``scenes``, each ``(Z, C, Y, X)`` (``(T, Z, C, Y, X)`` when ``times`` > 1), side by side.

    ``compression``: pylibCZIrw's options string (``zstd1:ExplicitLevel=1``); None stores the pixels as they are.
    """
    from pylibCZIrw import czi

    with czi.create_czi(str(path), exist_ok=True, compression_options=compression) as document:
        left = 0
        for scene, planes in enumerate(scenes):
            series = planes if times > 1 else planes[None]
            for t, stack in enumerate(series):
                for z, plane in enumerate(stack):
                    for c, channel in enumerate(plane):
                        document.write(channel, plane={"Z": z, "C": c, "T": t}, scene=scene, location=(left, 0))
            left += planes.shape[-1] + 16
        names = dict(enumerate(channel_names)) if channel_names else None
        # CZI's Scaling holds metres.
        document.write_metadata(
            "focusfuse test", channel_names=names, scale_x=pixel_um * 1e-6, scale_y=pixel_um * 1e-6,
            scale_z=z_step_um * 1e-6,
        )  # fmt: skip


def write_ome_zarr(
    path: Path, planes: np.ndarray, *, pixel_um: float, z_step_um: float, channel_names: list[str], version: str = "0.5"
) -> None:
    """An OME-Zarr image of ``(Z, C, Y, X)`` planes with a two-level pyramid, NGFF ``version`` 0.4 or 0.5."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    czyx = np.moveaxis(planes, 1, 0)  # NGFF orders channels before space
    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    window = {"start": 0, "end": int(czyx.max()), "min": 0, "max": int(np.iinfo(czyx.dtype).max)}
    write_image(
        image=czyx,
        group=root,
        fmt=fmt,
        axes="czyx",
        scale={"c": 1.0, "z": z_step_um, "y": pixel_um, "x": pixel_um},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
        scale_factors=[2],
        storage_options={"chunks": (1, 1, czyx.shape[2], czyx.shape[3])},
        omero={"channels": [{"label": name, "color": "FFFFFF", "window": window} for name in channel_names]},
    )


def _lif_image(name: str, planes: np.ndarray, memory_id: str, pixel_um: float, z_step_um: float):
    """The XML Element of one image stored Z, then C, then Y, X (as LAS X stores a z-stack)."""
    depth, channels, height, width = planes.shape
    itemsize = planes.dtype.itemsize
    element = ElementTree.Element("Element", Name=name, Visibility="1", CopyOption="1", UniqueID=memory_id)
    image = ElementTree.SubElement(ElementTree.SubElement(element, "Data"), "Image", TextDescription="")
    description = ElementTree.SubElement(image, "ImageDescription")
    channel_list = ElementTree.SubElement(description, "Channels")
    for channel in range(channels):
        ElementTree.SubElement(
            channel_list, "ChannelDescription", DataType="0", ChannelTag="0", Resolution=str(8 * itemsize),
            NameOfMeasuredQuantity="", Min="0", Max=str(2 ** (8 * itemsize) - 1), Unit="",
            LUTName=["Green", "Red", "Blue", "Gray"][channel % 4], IsLUTInverted="0",
            BytesInc=str(channel * height * width * itemsize), BitInc="0",
        )  # fmt: skip
    dimensions = ElementTree.SubElement(description, "Dimensions")
    for dim_id, count, step_um, bytes_inc in (
        (1, width, pixel_um, itemsize),
        (2, height, pixel_um, width * itemsize),
        (3, depth, z_step_um, channels * height * width * itemsize),
    ):
        ElementTree.SubElement(
            dimensions, "DimensionDescription", DimID=str(dim_id), NumberOfElements=str(count), Origin="0",
            Length=repr(step_um * 1e-6 * (count - 1)), Unit="m", BitInc="0", BytesInc=str(bytes_inc),
        )  # fmt: skip
    ElementTree.SubElement(element, "Memory", Size=str(planes.nbytes), MemoryBlockID=memory_id)
    ElementTree.SubElement(element, "Children")
    return element


def write_lif(path: Path, images: dict[str, np.ndarray], *, pixel_um: float, z_step_um: float) -> None:
    """A LIF (version 2) of named ``(Z, C, Y, X)`` images: the XML header, then one memory block per image."""
    header = ElementTree.Element("LMSDataContainerHeader", Version="2")
    project = ElementTree.SubElement(header, "Element", Name=path.name, Visibility="1", CopyOption="1")
    ElementTree.SubElement(ElementTree.SubElement(project, "Data"), "Experiment", IsSavedFlag="1")
    ElementTree.SubElement(project, "Memory", Size="0", MemoryBlockID="MemBlock_0")
    children = ElementTree.SubElement(project, "Children")
    blocks = [("MemBlock_0", b"")]
    for number, (name, planes) in enumerate(images.items(), start=1):
        memory_id = f"MemBlock_{number}"
        children.append(_lif_image(name, planes, memory_id, pixel_um, z_step_um))
        blocks.append((memory_id, np.ascontiguousarray(planes).astype(planes.dtype.newbyteorder("<")).tobytes()))
    xml = ElementTree.tostring(header, encoding="unicode").encode("utf-16-le")
    with open(path, "wb") as handle:
        handle.write(struct.pack("<IIBI", 0x70, len(xml) + 5, 0x2A, len(xml) // 2) + xml)
        for memory_id, data in blocks:
            name = memory_id.encode("utf-16-le")
            handle.write(struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(data), 0x2A, len(name) // 2) + name + data)


def write_bioformats2raw(path: Path, images: list[np.ndarray], *, pixel_um: float, z_step_um: float) -> None:
    """A bioformats2raw folder (what Bio-Formats' converter writes): one OME-Zarr image per series, 0, 1, ..."""
    import zarr

    for number, planes in enumerate(images):
        write_ome_zarr(path / str(number), planes, pixel_um=pixel_um, z_step_um=z_step_um, channel_names=["A", "B"])
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}


ND2_CHUNK_MAGIC = 0x0ABECEDA
ND2_FILE_SIGNATURE = b"ND2 FILE SIGNATURE CHUNK NAME01!"
ND2_FILEMAP_SIGNATURE = b"ND2 FILEMAP SIGNATURE NAME 0001!"
ND2_CHUNKMAP_SIGNATURE = b"ND2 CHUNK MAP SIGNATURE 0000001!"
ND2_FRAME_NAME_BYTES = 4072  # a frame's pixels start 4096 bytes into its chunk, after an 8-byte time stamp


def _variant(name: str, value) -> str:
    """NIS-Elements' XML variant of a value: runtype and value per scalar, elements for a dict."""
    if isinstance(value, dict):
        inner = "".join(_variant(key, item) for key, item in value.items())
        return f'<{name} runtype="CLxListVariant">{inner}</{name}>'
    if isinstance(value, bool):
        return f'<{name} runtype="bool" value="{str(value).lower()}"/>'
    if isinstance(value, int):
        return f'<{name} runtype="lx_uint32" value="{value}"/>'
    if isinstance(value, float):
        return f'<{name} runtype="double" value="{value!r}"/>'
    return f'<{name} runtype="CLxStringW" value="{value}"/>'


def _nd2_chunk(name: bytes, data: bytes, name_bytes: int | None = None) -> bytes:
    padded = name.ljust(name_bytes or len(name), b"\x00")
    return struct.pack("<IIQ", ND2_CHUNK_MAGIC, len(padded), len(data)) + padded + data


def write_nd2(
    path: Path,
    positions: list[np.ndarray],
    *,
    pixel_um: float,
    z_step_um: float,
    channel_names: list[str],
    position_names: list[str] | None = None,
) -> None:
    """An ND2 (version 3.0, metadata as NIS-Elements' XML variants) of ``(Z, C, Y, X)`` stacks, one per position.

    Frames run Z fastest, then position, each holding every channel of its point
    interleaved per pixel, as NIS-Elements stores them.
    """
    depth, channels, height, width = positions[0].shape
    itemsize = positions[0].dtype.itemsize
    attributes = {
        "uiWidth": width, "uiWidthBytes": width * channels * itemsize, "uiHeight": height, "uiComp": channels,
        "uiBpcInMemory": 8 * itemsize, "uiBpcSignificant": 8 * itemsize, "uiSequenceCount": depth * len(positions),
        "eCompression": 2,
    }  # fmt: skip
    no_spectrum = {"uiCount": 0}
    planes = {
        f"a{index}": {
            "uiCompCount": 1, "uiSampleIndex": index, "sDescription": name, "uiColor": 16777215,
            "pFluorescentProbe": {"m_sName": name, "m_ExcitationSpectrum": no_spectrum},
        }
        for index, name in enumerate(channel_names)
    }  # fmt: skip
    picture_planes = {"uiCount": channels, "sPlaneNew": planes}
    metadata = {"bCalibrated": True, "dCalibration": pixel_um, "sPicturePlanes": picture_planes}
    z_loop = {"eType": 4, "uLoopPars": {"uiCount": depth, "dZStep": z_step_um, "dZLow": 0.0, "dZHigh": 0.0}}
    experiment: dict = z_loop
    if len(positions) > 1:
        names = position_names or [""] * len(positions)
        points = {f"i{n:010}": {"dPosX": 10.0 * n, "dPosY": 0.0, "dPosZ": 0.0, "dPosName": name}
                  for n, name in enumerate(names)}  # fmt: skip
        experiment = {
            "eType": 2, "uLoopPars": {"uiCount": len(positions), "Points": points},
            "ppNextLevelEx": {"i0000000000": z_loop},
        }  # fmt: skip
    chunks = [
        (b"ImageAttributesLV!", _variant("variant", {"SLxImageAttributes": attributes}).encode()),
        (b"ImageMetadataSeqLV|0!", _variant("variant", {"SLxPictureMetadata": metadata}).encode()),
        (b"ImageMetadataLV!", _variant("variant", {"SLxExperiment": experiment}).encode()),
    ]
    frames = [stack[z] for stack in positions for z in range(depth)]  # Z fastest, then position
    with open(path, "wb") as handle:
        handle.write(_nd2_chunk(ND2_FILE_SIGNATURE, b"Ver3.0".ljust(64, b"\x00")))
        chunk_map = b""
        for number, planes_czyx in enumerate(frames):
            pixels = np.ascontiguousarray(np.moveaxis(planes_czyx, 0, -1)).astype(planes_czyx.dtype.newbyteorder("<"))
            offset = handle.tell()
            name = f"ImageDataSeq|{number}!".encode()
            handle.write(_nd2_chunk(name, struct.pack("<d", float(number)) + pixels.tobytes(), ND2_FRAME_NAME_BYTES))
            chunk_map += name + struct.pack("<QQ", offset, handle.tell() - offset)
        for name, data in chunks:
            offset = handle.tell()
            handle.write(_nd2_chunk(name, data))
            chunk_map += name + struct.pack("<QQ", offset, handle.tell() - offset)
        location = handle.tell()
        chunk_map += ND2_CHUNKMAP_SIGNATURE + struct.pack("<Q", location)
        handle.write(_nd2_chunk(ND2_FILEMAP_SIGNATURE, chunk_map))
        handle.write(ND2_CHUNKMAP_SIGNATURE + struct.pack("<Q", location))
