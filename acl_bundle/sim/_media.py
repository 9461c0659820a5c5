"""``acl.media``, the image subset of DVPP (media data processing V1): DVPP memory, channels,
picture descriptors, ROI / resize / JPEG-encode configs, JPEGD, VPC resize / crop /
crop-and-paste (single and batch), JPEGE. Decoding and encoding use Pillow (extra ``sim``).

Rules come from the pyACL documentation pages (CANN 8.0 "媒体数据处理V1"): dvpp_malloc (size
rounded up to 32 B plus 32 B, start 128-B aligned), "JPEGD 功能及约束说明" (output YUV420SP
NV12/NV21, width and height rounded down to even, width stride = width aligned to 128 on
Atlas 200/300/500 and training products (Ascend310, Ascend910) and to 64 on the others
(Ascend310P, 310B, 910B), height stride aligned to 16, buffer >= stride_w * stride_h * 3/2,
resolution 32x32..8192x8192, Huffman baseline only), "VPC 功能及约束说明" (YUV420SP width and
height even, width stride a multiple of 16, height stride a multiple of 2, buffer >= stride_w *
stride_h * 3/2, width stride 32..4096 and height stride 6..4096 (input up to 8192 for a plain
resize: "8K 缩放"), scaling ratio within [1/32, 16] per side; crop area at least 10x6, left/top
even and right/bottom odd; paste area left offset 16-aligned, inside the output), "JPEGE 功能及
约束说明" (input NV12/NV21, 32x32..8192x8192, even sizes, width stride a multiple of 16, height
stride = height or height aligned to 16), the batch pages (roi_nums: as many entries as input
pictures, their sum = the output batch size, at most 256).

Codes: a documented constraint violated at submission -> 100000 (ACL_ERROR_INVALID_PARAM: the
pages say "non-zero"; U for the exact value); a JPEG the decoder does not support (progressive,
arithmetic coding, CMYK, not a JPEG) -> 148052 ACL_ERROR_UNSUPPORTED_JPEG (hicann/runtime
include/external/acl/acl_base_rt.h:119; its meaning in hicann/ge docs aclError.md:73). What
depends on the data (the JPEG is read when the stream runs, after earlier copies on it) is
reported when the stream is synchronised, and in the output desc's ret_code.
"""
from __future__ import annotations

import ctypes
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _state as S
from ._memory import allocate, describe, free_device_block, resolve
from ._state import LOCK, WORLD, NotImplementedInSimulator, api, ints, new_handle, set_err

log = logging.getLogger("acl_bundle.sim")

E_JPEG = S.CODES["ACL_ERROR_UNSUPPORTED_JPEG"]  # 148052

# acldvppPixelFormat (pyACL: acldvppPixelFormat)
PIXEL_FORMAT_YUV_400 = 0
PIXEL_FORMAT_YUV_SEMIPLANAR_420 = 1  # NV12
PIXEL_FORMAT_YVU_SEMIPLANAR_420 = 2  # NV21
YUV420SP = (PIXEL_FORMAT_YUV_SEMIPLANAR_420, PIXEL_FORMAT_YVU_SEMIPLANAR_420)
DOCUMENTED_FORMATS = set(range(0, 18)) | {1000, 1001, 1002, 1003, 1004, 1005}  # acldvppPixelFormat values
MAX_ROIS = 256


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is in the sim extra
        raise ImportError(
            "acl.media on the simulator decodes and encodes with Pillow: "
            "pip install -e '.[sim]' in a checkout of acl_bundle"
        ) from e
    return Image


def jpegd_width_align() -> int:
    """JPEGD output width stride alignment of the configured SoC (JPEGD page: 128 on Atlas
    200/300/500 and training products, 64 on Atlas inference (310P), 200I/500 A2 and A2 products)."""
    soc = S.CONFIG.soc_name
    if soc.startswith(("Ascend310P", "Ascend310B", "Ascend910B", "Ascend910_93")):
        return 64
    return 128


def _align(v: int, a: int) -> int:
    return (v + a - 1) // a * a


# ---- descriptors ---------------------------------------------------------------------------
@dataclass(eq=False)
class PicDesc:
    id: int
    batch: int = 0  # owning batch desc (destroyed with it)
    data: int = 0
    size: int = 0
    format: int = PIXEL_FORMAT_YUV_400
    width: int = 0
    height: int = 0
    width_stride: int = 0
    height_stride: int = 0
    ret_code: int = 0


@dataclass(eq=False)
class BatchPicDesc:
    id: int
    pics: list[PicDesc] = field(default_factory=list)


@dataclass(eq=False)
class Roi:
    id: int
    left: int
    right: int
    top: int
    bottom: int


@dataclass(eq=False)
class ResizeConfig:
    id: int
    interpolation: int = 0


@dataclass(eq=False)
class JpegeConfig:
    id: int
    level: int = 100  # U: the default quality of acldvppCreateJpegeConfig is not documented


@dataclass(eq=False)
class ChannelDesc:
    id: int
    created: bool = False
    ctx: int = 0


def _new(obj: Any) -> int:
    with LOCK:
        WORLD.media[obj.id] = obj
    return obj.id


def _get(kind: type, h: Any) -> Any:
    if not isinstance(h, int):
        return None
    obj = WORLD.media.get(h)
    return obj if isinstance(obj, kind) else None


def _destroy(name: str, kind: type, h: int) -> int:
    with LOCK:
        obj = _get(kind, h)
        if obj is None or (isinstance(obj, PicDesc) and obj.batch):
            why = "belongs to a batch desc (destroy that)" if obj is not None else f"is not a live {kind.__name__}"
            return set_err(S.E_PARAM, f"{name}: {h:#x} {why}")
        del WORLD.media[h]
        if isinstance(obj, BatchPicDesc):
            for p in obj.pics:
                WORLD.media.pop(p.id, None)
    return 0


# ---- memory ----------------------------------------------------------------------------------
@api("acl.media.dvpp_malloc", "t1", ctx=True, pre=ints("size"))
def dvpp_malloc(size: int) -> tuple[int, int]:
    """DVPP device memory: size rounded up to 32 B plus 32 B, start 128-B aligned (pyACL dvpp_malloc page)."""
    if size <= 0:
        return 0, set_err(S.E_PARAM, f"dvpp_malloc: size {size} must be > 0")
    return allocate("dvpp_malloc", size, dvpp=True)


@api("acl.media.dvpp_free", "ret", ctx=True, pre=ints("dev_ptr"))
def dvpp_free(dev_ptr: int) -> int:
    with LOCK:
        blk = WORLD.device_blocks.get(dev_ptr)
        if blk is None or not blk.dvpp:
            why = (
                "came from acl.rt.malloc (free it with acl.rt.free)"
                if blk is not None
                else "is not the start of a live dvpp_malloc block (double free?)"
            )
            return set_err(S.E_RT_PARAM, f"dvpp_free: {describe(dev_ptr)} {why}")
        free_device_block(blk)
    return 0


# ---- channel ---------------------------------------------------------------------------------
@api("acl.media.dvpp_create_channel_desc", "handle")
def dvpp_create_channel_desc() -> int:
    return _new(ChannelDesc(new_handle()))


@api("acl.media.dvpp_destroy_channel_desc", "ret", pre=ints("channel_desc"))
def dvpp_destroy_channel_desc(channel_desc: int) -> int:
    with LOCK:
        ch = _get(ChannelDesc, channel_desc)
        if ch is not None and ch.created:
            return set_err(
                S.E_PARAM,
                f"dvpp_destroy_channel_desc: channel {channel_desc:#x} is still created (dvpp_destroy_channel first)",
            )
    return _destroy("dvpp_destroy_channel_desc", ChannelDesc, channel_desc)


@api("acl.media.dvpp_create_channel", "ret", ctx=True, pre=ints("channel_desc"))
def dvpp_create_channel(channel_desc: int) -> int:
    with LOCK:
        ch = _get(ChannelDesc, channel_desc)
        if ch is None:
            return set_err(S.E_PARAM, f"dvpp_create_channel: {channel_desc:#x} is not a live channel desc")
        if ch.created:
            return set_err(S.E_PARAM, f"dvpp_create_channel: channel {channel_desc:#x} is created already")
        ch.created, ch.ctx = True, S.current_context().id
    return 0


@api("acl.media.dvpp_destroy_channel", "ret", pre=ints("channel_desc"))
def dvpp_destroy_channel(channel_desc: int) -> int:
    with LOCK:
        ch = _get(ChannelDesc, channel_desc)
        if ch is None or not ch.created:
            return set_err(S.E_PARAM, f"dvpp_destroy_channel: {channel_desc:#x} is not a created channel")
        ch.created = False
    return 0


# ---- picture descriptors -----------------------------------------------------------------------
@api("acl.media.dvpp_create_pic_desc", "handle")
def dvpp_create_pic_desc() -> int:
    return _new(PicDesc(new_handle()))


@api("acl.media.dvpp_destroy_pic_desc", "ret", pre=ints("pic_desc"))
def dvpp_destroy_pic_desc(pic_desc: int) -> int:
    return _destroy("dvpp_destroy_pic_desc", PicDesc, pic_desc)


_PIC_FIELDS = ("data", "size", "format", "width", "height", "width_stride", "height_stride", "ret_code")


def _pic_setter(fname: str) -> Callable:
    @api(f"acl.media.dvpp_set_pic_desc_{fname}", "ret", pre=ints("pic_desc", fname))
    def setter(pic_desc: int, value: int) -> int:
        with LOCK:
            pd = _get(PicDesc, pic_desc)
            if pd is None:
                return set_err(S.E_PARAM, f"dvpp_set_pic_desc_{fname}: {pic_desc!r} is not a live pic desc")
            if value < 0 or value >= 1 << (64 if fname == "data" else 32):
                return set_err(S.E_PARAM, f"dvpp_set_pic_desc_{fname}: {value} out of range")
            setattr(pd, fname, int(value))
        return 0

    return setter


def _pic_getter(fname: str) -> Callable:
    @api(f"acl.media.dvpp_get_pic_desc_{fname}", "int0", pre=ints("pic_desc"))
    def getter(pic_desc: int) -> int:
        with LOCK:
            pd = _get(PicDesc, pic_desc)
            if pd is None:
                set_err(S.E_PARAM, f"dvpp_get_pic_desc_{fname}: {pic_desc!r} is not a live pic desc")
                return 0
            return int(getattr(pd, fname))

    return getter


for _f in _PIC_FIELDS:
    if _f != "ret_code":  # the ret code is written by the device only
        _pic_setter(_f)
    _pic_getter(_f)


@api("acl.media.dvpp_create_batch_pic_desc", "handle", pre=ints("batch_size"))
def dvpp_create_batch_pic_desc(batch_size: int) -> int:
    if batch_size <= 0:
        set_err(S.E_PARAM, f"dvpp_create_batch_pic_desc: batch_size {batch_size} must be > 0")
        return 0
    b = BatchPicDesc(new_handle())
    with LOCK:
        for _ in range(batch_size):
            p = PicDesc(new_handle(), batch=b.id)
            b.pics.append(p)
            WORLD.media[p.id] = p
    return _new(b)


@api("acl.media.dvpp_get_pic_desc", "handle", pre=ints("batch_pic_desc", "index"))
def dvpp_get_pic_desc(batch_pic_desc: int, index: int) -> int:
    with LOCK:
        b = _get(BatchPicDesc, batch_pic_desc)
        if b is None or not 0 <= index < len(b.pics):
            set_err(S.E_PARAM, f"dvpp_get_pic_desc: no picture {index} in batch desc {batch_pic_desc:#x}")
            return 0
        return b.pics[index].id


@api("acl.media.dvpp_destroy_batch_pic_desc", "ret", pre=ints("batch_pic_desc"))
def dvpp_destroy_batch_pic_desc(batch_pic_desc: int) -> int:
    return _destroy("dvpp_destroy_batch_pic_desc", BatchPicDesc, batch_pic_desc)


# ---- configs -----------------------------------------------------------------------------------
@api("acl.media.dvpp_create_roi_config", "handle", pre=ints("left", "right", "top", "bottom"))
def dvpp_create_roi_config(left: int, right: int, top: int, bottom: int) -> int:
    if min(left, right, top, bottom) < 0:
        set_err(S.E_PARAM, f"dvpp_create_roi_config: offsets must be >= 0 ({left}, {right}, {top}, {bottom})")
        return 0
    return _new(Roi(new_handle(), left, right, top, bottom))


@api("acl.media.dvpp_set_roi_config", "ret", pre=ints("roi_config", "left", "right", "top", "bottom"))
def dvpp_set_roi_config(roi_config: int, left: int, right: int, top: int, bottom: int) -> int:
    with LOCK:
        r = _get(Roi, roi_config)
        if r is None or min(left, right, top, bottom) < 0:
            return set_err(
                S.E_PARAM, f"dvpp_set_roi_config: {roi_config:#x} is not a live roi config or an offset is negative"
            )
        r.left, r.right, r.top, r.bottom = left, right, top, bottom
    return 0


def _roi_setter(side: str) -> Callable:
    @api(f"acl.media.dvpp_set_roi_config_{side}", "ret", pre=ints("roi_config", side))
    def setter(roi_config: int, value: int) -> int:
        with LOCK:
            r = _get(Roi, roi_config)
            if r is None or value < 0:
                return set_err(
                    S.E_PARAM, f"dvpp_set_roi_config_{side}: {roi_config:#x} is not a live roi config or {value} < 0"
                )
            setattr(r, side, value)
        return 0

    return setter


for _side in ("left", "right", "top", "bottom"):
    _roi_setter(_side)


@api("acl.media.dvpp_destroy_roi_config", "ret", pre=ints("roi_config"))
def dvpp_destroy_roi_config(roi_config: int) -> int:
    return _destroy("dvpp_destroy_roi_config", Roi, roi_config)


@api("acl.media.dvpp_create_resize_config", "handle")
def dvpp_create_resize_config() -> int:
    return _new(ResizeConfig(new_handle()))


@api("acl.media.dvpp_set_resize_config_interpolation", "ret", pre=ints("resize_config", "interpolation"))
def dvpp_set_resize_config_interpolation(resize_config: int, interpolation: int) -> int:
    """0 default, 1 bilinear (OpenCV-like), 2 nearest (OpenCV-like), 3 bilinear (TF), 4 nearest (TF)."""
    with LOCK:
        c = _get(ResizeConfig, resize_config)
        if c is None or not 0 <= interpolation <= 4:
            return set_err(
                S.E_PARAM,
                f"dvpp_set_resize_config_interpolation: {resize_config:#x} is not a live resize config or "
                f"{interpolation} not in 0..4",
            )
        c.interpolation = interpolation
    return 0


@api("acl.media.dvpp_get_resize_config_interpolation", "int0", pre=ints("resize_config"))
def dvpp_get_resize_config_interpolation(resize_config: int) -> int:
    with LOCK:
        c = _get(ResizeConfig, resize_config)
        return c.interpolation if c is not None else 0


@api("acl.media.dvpp_destroy_resize_config", "ret", pre=ints("resize_config"))
def dvpp_destroy_resize_config(resize_config: int) -> int:
    return _destroy("dvpp_destroy_resize_config", ResizeConfig, resize_config)


@api("acl.media.dvpp_create_jpege_config", "handle")
def dvpp_create_jpege_config() -> int:
    return _new(JpegeConfig(new_handle()))


@api("acl.media.dvpp_set_jpege_config_level", "ret", pre=ints("jpege_config", "level"))
def dvpp_set_jpege_config_level(jpege_config: int, level: int) -> int:
    """Quality 0..100 (JPEGE page; 0 behaves as 100)."""
    with LOCK:
        c = _get(JpegeConfig, jpege_config)
        if c is None or not 0 <= level <= 100:
            return set_err(
                S.E_PARAM,
                f"dvpp_set_jpege_config_level: {jpege_config:#x} is not a live jpege config or level {level} not in "
                "0..100",
            )
        c.level = level
    return 0


@api("acl.media.dvpp_get_jpege_config_level", "int0", pre=ints("jpege_config"))
def dvpp_get_jpege_config_level(jpege_config: int) -> int:
    with LOCK:
        c = _get(JpegeConfig, jpege_config)
        return c.level if c is not None else 0


@api("acl.media.dvpp_destroy_jpege_config", "ret", pre=ints("jpege_config"))
def dvpp_destroy_jpege_config(jpege_config: int) -> int:
    return _destroy("dvpp_destroy_jpege_config", JpegeConfig, jpege_config)


# ---- shared checks --------------------------------------------------------------------------------
class Refused(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def _refuse(msg: str, code: int = S.E_PARAM) -> Refused:
    return Refused(code, msg)


def _channel(name: str, channel_desc: int) -> ChannelDesc:
    ch = _get(ChannelDesc, channel_desc)
    if ch is None or not ch.created:
        raise _refuse(
            f"{name}: {channel_desc!r} is not a created channel (dvpp_create_channel_desc + dvpp_create_channel)"
        )
    return ch


def _dvpp_range(name: str, what: str, ptr: int, n: int) -> None:
    blk, msg = resolve(ptr, n)
    if blk is None:
        raise _refuse(f"{name}: {what} {msg}")
    if not blk.dvpp:
        raise _refuse(f"{name}: {what} {ptr:#x} is not acl.media.dvpp_malloc memory (the DVPP pages require it)")


def _pic(name: str, h: int, role: str, *, in_max: int = 4096) -> PicDesc:
    """A VPC input/output picture: YUV420SP, even size, strides and buffer as the VPC page gives them."""
    pd = _get(PicDesc, h)
    if pd is None:
        raise _refuse(f"{name}: {role} {h!r} is not a live pic desc")
    if pd.format not in YUV420SP:
        if pd.format in DOCUMENTED_FORMATS:
            raise NotImplementedInSimulator(
                f"{name}: {role} format {pd.format}: the simulator's VPC handles YUV420SP NV12 (1) / NV21 (2) only"
            )
        raise _refuse(f"{name}: {role} format {pd.format} is not an acldvppPixelFormat")
    w, h_, ws, hs = pd.width, pd.height, pd.width_stride, pd.height_stride
    if w <= 0 or h_ <= 0 or w % 2 or h_ % 2:
        raise _refuse(f"{name}: {role} {w}x{h_}: YUV420SP width and height must be even and > 0")
    if ws % 16 or ws < w or hs % 2 or hs < h_:
        raise _refuse(
            f"{name}: {role} strides {ws}x{hs}: width stride must be a multiple of 16 >= width {w}, height stride a "
            f"multiple of 2 >= height {h_}"
        )
    hi = in_max if role == "input" else 4096
    if not (32 <= ws <= hi and 6 <= hs <= hi):
        raise _refuse(f"{name}: {role} strides {ws}x{hs} outside 32..{hi} x 6..{hi}")
    need = ws * hs * 3 // 2
    if pd.size < need:
        raise _refuse(f"{name}: {role} buffer size {pd.size} < width stride * height stride * 3/2 = {need}")
    _dvpp_range(name, f"{role} data", pd.data, pd.size)
    return pd


def _roi(name: str, h: int, what: str) -> Roi:
    r = _get(Roi, h)
    if r is None:
        raise _refuse(f"{name}: {what} {h!r} is not a live roi config")
    return r


def _check_crop(name: str, r: Roi, pic: PicDesc) -> None:
    """Crop area: left/top even, right/bottom odd, at least 10x6, inside the picture."""
    if r.left % 2 or r.top % 2 or r.right % 2 == 0 or r.bottom % 2 == 0:
        raise _refuse(
            f"{name}: crop area ({r.left}, {r.right}, {r.top}, {r.bottom}): left and top must be even, right and "
            "bottom odd"
        )
    cw, chh = r.right - r.left + 1, r.bottom - r.top + 1
    if cw < 10 or chh < 6:
        raise _refuse(f"{name}: crop area {cw}x{chh} is smaller than 10x6")
    if r.right >= pic.width or r.bottom >= pic.height:
        raise _refuse(
            f"{name}: crop area ({r.left}, {r.right}, {r.top}, {r.bottom}) leaves the {pic.width}x{pic.height} input"
        )


def _check_paste(name: str, r: Roi, pic: PicDesc) -> None:
    """Paste area: left 16-aligned, top even, right/bottom odd, at least 10x6, inside the output."""
    if r.left % 16 or r.top % 2 or r.right % 2 == 0 or r.bottom % 2 == 0:
        raise _refuse(
            f"{name}: paste area ({r.left}, {r.right}, {r.top}, {r.bottom}): left must be a multiple of 16, top even, "
            "right and bottom odd"
        )
    pw, ph = r.right - r.left + 1, r.bottom - r.top + 1
    if pw < 10 or ph < 6:
        raise _refuse(f"{name}: paste area {pw}x{ph} is smaller than 10x6")
    if r.right >= pic.width or r.bottom >= pic.height:
        raise _refuse(
            f"{name}: paste area ({r.left}, {r.right}, {r.top}, {r.bottom}) leaves the {pic.width}x{pic.height} output"
        )


def _check_ratio(name: str, sw: int, sh: int, dw: int, dh: int) -> None:
    for s, d, side in ((sw, dw, "width"), (sh, dh, "height")):
        if not (s <= 32 * d and d <= 16 * s):
            raise _refuse(f"{name}: scaling {side} {s} -> {d} is outside [1/32, 16]")


def _submit(name: str, stream: int, build: Callable[[], Callable[[], int]]) -> int:
    """Check the stream, run ``build`` (the submission checks; returns the task) and queue the task."""
    from ._rt import check_stream, enqueue

    with LOCK:
        ret = check_stream(name, stream)
        if ret:
            return ret
        try:
            task = build()
        except Refused as e:
            return set_err(e.code, str(e))
        return enqueue(stream, task)


# ---- YUV420SP planes -------------------------------------------------------------------------------
def _view(ptr: int, n: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_uint8 * n).from_address(ptr), dtype=np.uint8)  # type: ignore[call-overload]  # ctypes buffer


def read_yuv420sp(pd: PicDesc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y, U, V) of a YUV420SP picture in device memory, as uint8 planes of width x height (/2)."""
    ws, hs, w, h = pd.width_stride, pd.height_stride, pd.width, pd.height
    buf = _view(pd.data, ws * hs * 3 // 2)
    y = buf[: ws * hs].reshape(hs, ws)[:h, :w].copy()
    uv = buf[ws * hs :].reshape(hs // 2, ws)[: h // 2, :w]
    a, b = uv[:, 0::2].copy(), uv[:, 1::2].copy()
    return (y, a, b) if pd.format == PIXEL_FORMAT_YUV_SEMIPLANAR_420 else (y, b, a)


def write_yuv420sp(pd: PicDesc, y: np.ndarray, u: np.ndarray, v: np.ndarray, x0: int = 0, y0: int = 0) -> None:
    """Write planes at (x0, y0) (even) of a YUV420SP picture in device memory."""
    ws, hs = pd.width_stride, pd.height_stride
    buf = _view(pd.data, ws * hs * 3 // 2)
    hh, ww = y.shape
    buf[: ws * hs].reshape(hs, ws)[y0 : y0 + hh, x0 : x0 + ww] = y
    uv = buf[ws * hs :].reshape(hs // 2, ws)[y0 // 2 : y0 // 2 + hh // 2, x0 : x0 + ww]
    first, second = (u, v) if pd.format == PIXEL_FORMAT_YUV_SEMIPLANAR_420 else (v, u)
    uv[:, 0::2] = first
    uv[:, 1::2] = second


def _resample(
    plane: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], interpolation: int
) -> np.ndarray:
    Image = _pil()
    modes = getattr(Image, "Resampling", Image)
    resample = modes.NEAREST if interpolation in (2, 4) else modes.BILINEAR
    im = Image.fromarray(np.ascontiguousarray(plane))
    if box == (0, 0, plane.shape[1], plane.shape[0]) and size == (plane.shape[1], plane.shape[0]):
        return plane
    return np.asarray(im.resize(size, resample, box=box), dtype=np.uint8)


def _crop_resize(
    src: tuple[np.ndarray, np.ndarray, np.ndarray],
    box: tuple[int, int, int, int],
    out_w: int,
    out_h: int,
    interpolation: int,
) -> tuple[np.ndarray, ...]:
    """Crop ``box`` (l, t, r+1, b+1; even) of each plane and resize it to out_w x out_h (chroma at half)."""
    y, u, v = src
    left, top, right, bottom = box
    cbox = (left // 2, top // 2, right // 2, bottom // 2)
    return (_resample(y, box, (out_w, out_h), interpolation),
            _resample(u, cbox, (out_w // 2, out_h // 2), interpolation),
            _resample(v, cbox, (out_w // 2, out_h // 2), interpolation))


# ---- VPC -------------------------------------------------------------------------------------------
def _vpc_task(
    name: str, jobs: list[tuple[PicDesc, PicDesc, tuple[int, int, int, int], tuple[int, int, int, int], int]]
) -> Callable[[], int]:
    """The device work: each job crops ``box`` of its input and writes it resized into ``dst_box`` of its output."""
    keep = [(WORLD.device_blocks.find(s.data, 1), WORLD.device_blocks.find(d.data, 1)) for s, d, _, _, _ in jobs]
    # the descs as submitted (the task carries their values); ret codes go to the live output descs
    snap = [(PicDesc(**s.__dict__), PicDesc(**d.__dict__), d, box, dst, interp) for s, d, box, dst, interp in jobs]

    def run() -> int:
        _ = keep
        for s, d, live, box, (dl, dt, dr, db), interp in snap:
            y, u, v = _crop_resize(read_yuv420sp(s), box, dr - dl, db - dt, interp)
            write_yuv420sp(d, y, u, v, x0=dl, y0=dt)
            live.ret_code = 0
        return 0

    return run


@api(
    "acl.media.dvpp_vpc_resize_async",
    "ret",
    pre=ints("channel_desc", "input_desc", "output_desc", "resize_config", "stream"),
)
def dvpp_vpc_resize_async(channel_desc: int, input_desc: int, output_desc: int, resize_config: int, stream: int) -> int:
    name = "dvpp_vpc_resize_async"

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        src = _pic(name, input_desc, "input", in_max=8192)
        dst = _pic(name, output_desc, "output")
        cfg = _get(ResizeConfig, resize_config)
        if cfg is None:
            raise _refuse(f"{name}: {resize_config!r} is not a live resize config")
        _check_ratio(name, src.width, src.height, dst.width, dst.height)
        return _vpc_task(
            name, [(src, dst, (0, 0, src.width, src.height), (0, 0, dst.width, dst.height), cfg.interpolation)]
        )

    return _submit(name, stream, build)


def _crop_job(name: str, src: PicDesc, dst: PicDesc, crop: Roi, paste: Roi | None) -> tuple:
    _check_crop(name, crop, src)
    box = (crop.left, crop.top, crop.right + 1, crop.bottom + 1)
    if paste is None:
        dbox = (0, 0, dst.width, dst.height)
    else:
        _check_paste(name, paste, dst)
        dbox = (paste.left, paste.top, paste.right + 1, paste.bottom + 1)
    _check_ratio(name, box[2] - box[0], box[3] - box[1], dbox[2] - dbox[0], dbox[3] - dbox[1])
    return (src, dst, box, dbox, 0)


@api(
    "acl.media.dvpp_vpc_crop_async", "ret", pre=ints("channel_desc", "input_desc", "output_desc", "crop_area", "stream")
)
def dvpp_vpc_crop_async(channel_desc: int, input_desc: int, output_desc: int, crop_area: int, stream: int) -> int:
    """Crop the area and resize it to the whole output."""
    name = "dvpp_vpc_crop_async"

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        src, dst = _pic(name, input_desc, "input"), _pic(name, output_desc, "output")
        return _vpc_task(name, [_crop_job(name, src, dst, _roi(name, crop_area, "crop area"), None)])

    return _submit(name, stream, build)


@api("acl.media.dvpp_vpc_crop_and_paste_async", "ret",
     pre=ints("channel_desc", "input_desc", "output_desc", "crop_area", "paste_area", "stream"))
def dvpp_vpc_crop_and_paste_async(
    channel_desc: int, input_desc: int, output_desc: int, crop_area: int, paste_area: int, stream: int
) -> int:
    """Crop the area, resize it to the paste area and write it there; the rest of the output is left as it was."""
    name = "dvpp_vpc_crop_and_paste_async"

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        src, dst = _pic(name, input_desc, "input"), _pic(name, output_desc, "output")
        job = _crop_job(name, src, dst, _roi(name, crop_area, "crop area"), _roi(name, paste_area, "paste area"))
        return _vpc_task(name, [job])

    return _submit(name, stream, build)


def _batch_jobs(
    name: str, src_batch: int, roi_nums: Any, dst_batch: int, crops: Any, pastes: Any | None
) -> list[tuple]:
    if (
        not isinstance(roi_nums, list)
        or not isinstance(crops, list)
        or (pastes is not None and not isinstance(pastes, list))
    ):
        raise TypeError(f"{name}: roi_nums, crop_area_list (and paste_area_list) must be lists")
    sb, db = _get(BatchPicDesc, src_batch), _get(BatchPicDesc, dst_batch)
    if sb is None or db is None:
        raise _refuse(f"{name}: {src_batch!r} / {dst_batch!r} must be live batch pic descs")
    total = sum(int(n) for n in roi_nums)
    if len(roi_nums) != len(sb.pics) or any(int(n) < 1 for n in roi_nums) or len(roi_nums) > MAX_ROIS:
        raise _refuse(
            f"{name}: roi_nums {roi_nums} must hold one count >= 1 per input picture ({len(sb.pics)}), at most "
            f"{MAX_ROIS} entries"
        )
    # the C call reads the first sum(roi_nums) areas of each array (U: a longer list is accepted)
    if (
        total > MAX_ROIS
        or total != len(db.pics)
        or len(crops) < total
        or (pastes is not None and len(pastes) < total)
    ):
        raise _refuse(
            f"{name}: sum(roi_nums) = {total} must equal the output batch size {len(db.pics)} and the number of areas"
            f" ({len(crops)}{'' if pastes is None else f', {len(pastes)}'}), at most {MAX_ROIS}"
        )
    jobs, k = [], 0
    for i, n in enumerate(roi_nums):
        src = _pic(name, sb.pics[i].id, "input")
        for _ in range(int(n)):
            dst = _pic(name, db.pics[k].id, "output")
            paste = _roi(name, pastes[k], "paste area") if pastes is not None else None
            jobs.append(_crop_job(name, src, dst, _roi(name, crops[k], "crop area"), paste))
            k += 1
    return jobs


@api("acl.media.dvpp_vpc_batch_crop_async", "t1")
def dvpp_vpc_batch_crop_async(channel_desc: int, src_batch_pic_descs: int, roi_nums: list, dst_batch_pic_descs: int,
                              crop_area_list: list, stream: int) -> tuple[int, int]:
    """``dst_batch_pic_descs, ret``: input i gives roi_nums[i] crops, in order, one per output picture."""
    name = "dvpp_vpc_batch_crop_async"
    S.check_int(("channel_desc", channel_desc), ("src_batch_pic_descs", src_batch_pic_descs),
                ("dst_batch_pic_descs", dst_batch_pic_descs), ("stream", stream))

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        return _vpc_task(
            name, _batch_jobs(name, src_batch_pic_descs, roi_nums, dst_batch_pic_descs, crop_area_list, None)
        )

    ret = _submit(name, stream, build)
    return (dst_batch_pic_descs if ret == 0 else 0), ret


@api("acl.media.dvpp_vpc_batch_crop_and_paste_async", "t1")
def dvpp_vpc_batch_crop_and_paste_async(
    channel_desc: int,
    src_batch_pic_descs: int,
    roi_nums: list,
    dst_batch_pic_descs: int,
    crop_area_list: list,
    paste_area_list: list,
    stream: int,
) -> tuple[int, int]:
    """``dst_batch_pic_descs, ret``: as batch crop, each crop resized into its paste area."""
    name = "dvpp_vpc_batch_crop_and_paste_async"
    S.check_int(("channel_desc", channel_desc), ("src_batch_pic_descs", src_batch_pic_descs),
                ("dst_batch_pic_descs", dst_batch_pic_descs), ("stream", stream))

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        jobs = _batch_jobs(name, src_batch_pic_descs, roi_nums, dst_batch_pic_descs, crop_area_list, paste_area_list)
        return _vpc_task(name, jobs)

    ret = _submit(name, stream, build)
    return (dst_batch_pic_descs if ret == 0 else 0), ret


# ---- JPEG ------------------------------------------------------------------------------------------
def _host_or_device_bytes(name: str, ptr: int, size: int) -> bytes:
    with LOCK:
        blk, msg = resolve(ptr, size)
        if blk is None:
            raise _refuse(f"{name}: data {msg}")
        keep = blk.owner()
    out = ctypes.string_at(ptr, size)
    del keep
    return out


def _open_jpeg(name: str, data: bytes) -> Any:
    """The Pillow image of a JPEG JPEGD can decode; Refused(148052) for what it cannot."""
    Image = _pil()
    try:
        im = Image.open(io.BytesIO(data), formats=["JPEG"])
    except Exception as e:
        raise _refuse(f"{name}: the data is not a JPEG image ({e})", E_JPEG) from None
    if im.info.get("progressive") or im.info.get("progression"):
        raise _refuse(f"{name}: progressive JPEG is not supported by JPEGD", E_JPEG)
    if im.mode not in ("L", "RGB", "YCbCr"):
        raise _refuse(
            f"{name}: JPEG colour space {im.mode} is not supported by JPEGD (YUV 4:4:4/4:2:2/4:2:0/4:0:0/4:4:0 only)",
            E_JPEG,
        )
    return im


def _components(im: Any) -> int:
    return 1 if im.mode == "L" else 3


@api("acl.media.dvpp_jpeg_get_image_info", "t3", pre=ints("data", "size"))
def dvpp_jpeg_get_image_info(data: int, size: int) -> tuple[int, int, int, int]:
    """``width, height, components, ret`` from the JPEG header (data in host or device memory)."""
    name = "dvpp_jpeg_get_image_info"
    try:
        if size <= 0:
            raise _refuse(f"{name}: size {size} must be > 0")
        im = _open_jpeg(name, _host_or_device_bytes(name, data, size))
    except Refused as e:
        return 0, 0, 0, set_err(e.code, str(e))
    return im.width, im.height, _components(im), 0


def _decode_size(w: int, h: int) -> tuple[int, int, int, int, int]:
    """(out_w, out_h, stride_w, stride_h, bytes) of JPEGD's YUV420SP output for a w x h JPEG."""
    ow, oh = w // 2 * 2, h // 2 * 2
    ws, hs = _align(ow, jpegd_width_align()), _align(oh, 16)
    return ow, oh, ws, hs, ws * hs * 3 // 2


@api("acl.media.dvpp_jpeg_predict_dec_size", "t1", pre=ints("data", "data_size", "output_pixel_format"))
def dvpp_jpeg_predict_dec_size(data: int, data_size: int, output_pixel_format: int) -> tuple[int, int]:
    """``size, ret``: the output buffer JPEGD needs (strides as the JPEGD page gives them)."""
    name = "dvpp_jpeg_predict_dec_size"
    try:
        if output_pixel_format not in YUV420SP:
            raise _refuse(
                f"{name}: output format {output_pixel_format}: the simulator's JPEGD outputs YUV420SP NV12 (1) / NV21 "
                "(2)"
            )
        im = _open_jpeg(name, _host_or_device_bytes(name, data, data_size))
    except Refused as e:
        return 0, set_err(e.code, str(e))
    return _decode_size(im.width, im.height)[4], 0


def decode_to_yuv420(im: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, Cb, Cr planes of a JPEG as the decoder produces them (no RGB round trip), chroma 4:2:0
    by 2x2 averaging, cropped to even width and height."""
    im.draft("YCbCr", im.size)  # libjpeg emits its YCbCr output, as JPEGD does
    w, h = im.width // 2 * 2, im.height // 2 * 2
    if im.mode == "L":
        y = np.asarray(im, dtype=np.uint8)[:h, :w]
        c = np.full((h // 2, w // 2), 128, np.uint8)
        return y.copy(), c, c.copy()
    arr = np.asarray(im.convert("YCbCr"), dtype=np.uint8)[:h, :w]
    y = arr[:, :, 0].copy()
    sub = arr[:, :, 1:].reshape(h // 2, 2, w // 2, 2, 2).astype(np.uint16).sum(axis=(1, 3))
    c = ((sub + 2) // 4).astype(np.uint8)
    return y, c[:, :, 0].copy(), c[:, :, 1].copy()


@api("acl.media.dvpp_jpeg_decode_async", "ret", pre=ints("channel_desc", "data", "size", "output_desc", "stream"))
def dvpp_jpeg_decode_async(channel_desc: int, data: int, size: int, output_desc: int, stream: int) -> int:
    """JPEG in DVPP memory -> YUV420SP; the output desc gets the decoded width/height and strides."""
    name = "dvpp_jpeg_decode_async"

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        if size <= 0:
            raise _refuse(f"{name}: size {size} must be > 0")
        _dvpp_range(name, "data", data, size)
        pd = _get(PicDesc, output_desc)
        if pd is None:
            raise _refuse(f"{name}: output {output_desc!r} is not a live pic desc")
        if pd.format not in YUV420SP:
            raise _refuse(f"{name}: output format {pd.format}: JPEGD output must be YUV420SP NV12 (1) / NV21 (2) here")
        _dvpp_range(name, "output data", pd.data, max(pd.size, 1))
        keep = (WORLD.device_blocks.find(data, 1), WORLD.device_blocks.find(pd.data, 1))
        out_data, out_size, fmt = pd.data, pd.size, pd.format

        def run() -> int:
            _ = keep
            try:
                im = _open_jpeg(name, ctypes.string_at(data, size))
                if not (32 <= im.width <= 8192 and 32 <= im.height <= 8192):
                    raise _refuse(f"{name}: JPEG {im.width}x{im.height} outside 32x32..8192x8192", E_JPEG)
                ow, oh, ws, hs, need = _decode_size(im.width, im.height)
                if out_size < need:
                    raise _refuse(f"{name}: output buffer {out_size} < {need} (stride {ws}x{hs} * 3/2)")
                planes = decode_to_yuv420(im)
            except Refused as e:
                pd.ret_code = e.code
                return set_err(e.code, str(e))
            out = PicDesc(
                0, data=out_data, size=out_size, format=fmt, width=ow, height=oh, width_stride=ws, height_stride=hs
            )
            write_yuv420sp(out, *planes)
            pd.width, pd.height, pd.width_stride, pd.height_stride, pd.ret_code = ow, oh, ws, hs, 0
            return 0

        return run

    return _submit(name, stream, build)


def _jpege_input(name: str, h: int) -> PicDesc:
    pd = _get(PicDesc, h)
    if pd is None:
        raise _refuse(f"{name}: input {h!r} is not a live pic desc")
    if pd.format not in YUV420SP:
        if pd.format in DOCUMENTED_FORMATS:
            raise NotImplementedInSimulator(
                f"{name}: input format {pd.format}: the simulator's JPEGE encodes YUV420SP NV12 (1) / NV21 (2) only"
            )
        raise _refuse(f"{name}: input format {pd.format} is not an acldvppPixelFormat")
    w, hh, ws, hs = pd.width, pd.height, pd.width_stride, pd.height_stride
    if not (32 <= w <= 8192 and 32 <= hh <= 8192) or w % 2 or hh % 2:
        raise _refuse(f"{name}: input {w}x{hh}: JPEGE needs even sizes within 32x32..8192x8192")
    if ws % 16 or ws < w or hs not in (hh, max(32, _align(hh, 16))):
        raise _refuse(
            f"{name}: input strides {ws}x{hs}: width stride a multiple of 16 >= {w}; height stride {hh} or "
            f"{max(32, _align(hh, 16))}"
        )
    if pd.size < ws * hs * 3 // 2:
        raise _refuse(f"{name}: input buffer size {pd.size} < {ws * hs * 3 // 2}")
    _dvpp_range(name, "input data", pd.data, pd.size)
    return pd


@api("acl.media.dvpp_jpeg_predict_enc_size", "t1", pre=ints("input_desc", "config"))
def dvpp_jpeg_predict_enc_size(input_desc: int, config: int) -> tuple[int, int]:
    """``size, ret``: an upper bound of the encoded size (U: the device's estimate is not documented;
    ours is stride_w * stride_h * 3/2 + 8 KiB of headers, at least 64 KiB)."""
    name = "dvpp_jpeg_predict_enc_size"
    try:
        with LOCK:
            pd = _jpege_input(name, input_desc)
            if _get(JpegeConfig, config) is None:
                raise _refuse(f"{name}: {config!r} is not a live jpege config")
    except Refused as e:
        return 0, set_err(e.code, str(e))
    return max(64 << 10, pd.width_stride * pd.height_stride * 3 // 2 + (8 << 10)), 0


@api(
    "acl.media.dvpp_jpeg_encode_async",
    "ret",
    pre=ints("channel_desc", "input_desc", "data", "size", "config", "stream"),
)
def dvpp_jpeg_encode_async(channel_desc: int, input_desc: int, data: int, size: int, config: int, stream: int) -> int:
    """YUV420SP -> JPEG in DVPP memory at ``data``; ``size`` is the address of a uint32 holding the
    buffer's size on entry and the encoded size when the stream has run."""
    name = "dvpp_jpeg_encode_async"

    def build() -> Callable[[], int]:
        _channel(name, channel_desc)
        src = _jpege_input(name, input_desc)
        cfg = _get(JpegeConfig, config)
        if cfg is None:
            raise _refuse(f"{name}: {config!r} is not a live jpege config")
        sblk, msg = resolve(size, 4, write=True)
        if sblk is None:
            raise _refuse(f"{name}: size pointer {msg}")
        cap = int.from_bytes(ctypes.string_at(size, 4), "little")
        _dvpp_range(name, "output data", data, max(cap, 1))
        snap = PicDesc(**{**src.__dict__})
        keep = (WORLD.device_blocks.find(src.data, 1), WORLD.device_blocks.find(data, 1), sblk.owner())
        quality = cfg.level or 100

        def run() -> int:
            _ = keep
            jpeg = encode_yuv420(read_yuv420sp(snap), quality)
            if len(jpeg) > cap:
                return set_err(
                    S.E_PARAM, f"{name}: the encoded image ({len(jpeg)} B) does not fit the {cap} B output buffer"
                )
            ctypes.memmove(data, jpeg, len(jpeg))
            ctypes.memmove(size, len(jpeg).to_bytes(4, "little"), 4)
            return 0

        return run

    return _submit(name, stream, build)


def encode_yuv420(planes: tuple[np.ndarray, np.ndarray, np.ndarray], quality: int) -> bytes:
    """Baseline Huffman JPEG (4:2:0) of Y/Cb/Cr planes, without an RGB round trip."""
    Image = _pil()
    y, u, v = planes
    h, w = y.shape
    up = [np.ascontiguousarray(np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)[:h, :w]) for c in (u, v)]
    im = Image.merge("YCbCr", [Image.fromarray(np.ascontiguousarray(y)), *(Image.fromarray(c) for c in up)])
    out = io.BytesIO()
    im.save(out, "JPEG", quality=int(quality), subsampling="4:2:0", optimize=False, progressive=False)
    return out.getvalue()
