"""acl.media (DVPP V1) on the simulator: DVPP memory, descriptors, JPEGD, VPC, JPEGE.

Decoded and resized pictures are compared with Pillow's own decode (to RGB, then its JFIF
YCbCr conversion) and Pillow's own resize of the RGB image: an independent path (RGB domain,
full-resolution chroma). Tolerances (docs/simulator.md), with the figures one run measured on
the synthetic picture below: after decode luma max |diff| <= 2 (measured 1), chroma (4:2:0,
against the 2x2 mean of the reference) mean <= 1.0 (0.54) and max <= 3 (1); after a bilinear
resize / crop / paste luma max <= 3 (2), chroma mean <= 1.5 (1.27) and max <= 8 (6).
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from acl_bundle import _constants as C
from acl_bundle import sim

Image = pytest.importorskip("PIL.Image")
acl = sim.acl
H2D, D2H = C.ACL_MEMCPY_HOST_TO_DEVICE, C.ACL_MEMCPY_DEVICE_TO_HOST
NV12, NV21 = 1, 2


def _picture(w: int, h: int) -> np.ndarray:
    """A smooth RGB test picture (gradients, a disc, stripes): JPEG-friendly, not constant."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * xx / max(w - 1, 1)
    g = 255 * yy / max(h - 1, 1)
    b = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    disc = (xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    r[disc], g[disc], b[disc] = 250, 40, 60
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def _jpeg(w: int, h: int, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(_picture(w, h)).save(out, "JPEG", quality=95, **kw)
    return out.getvalue()


def _ref_ycbcr(rgb_image) -> np.ndarray:
    return np.asarray(rgb_image.convert("YCbCr"), dtype=np.int16)


def _sub2(c: np.ndarray) -> np.ndarray:
    h, w = c.shape[0] // 2 * 2, c.shape[1] // 2 * 2
    return c[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


class Dvpp:
    """DVPP resources of one test, released in reverse at the end."""

    def __init__(self) -> None:
        self.stream, ret = acl.rt.create_stream()
        assert ret == 0
        self.chan = acl.media.dvpp_create_channel_desc()
        assert self.chan and acl.media.dvpp_create_channel(self.chan) == 0
        self.bufs: list[int] = []
        self.descs: list[int] = []
        self.rois: list[int] = []

    def malloc(self, n: int) -> int:
        p, ret = acl.media.dvpp_malloc(n)
        assert ret == 0, acl.get_recent_err_msg()
        self.bufs.append(p)
        return p

    def upload(self, data: bytes) -> int:
        p = self.malloc(len(data))
        assert acl.rt.memcpy(p, len(data), acl.util.bytes_to_ptr(data), len(data), H2D) == 0
        return p

    def download(self, p: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.uint8)
        assert acl.rt.memcpy(acl.util.numpy_to_ptr(out), n, p, n, D2H) == 0, acl.get_recent_err_msg()
        return out

    def pic(self, data: int, size: int, w: int, h: int, ws: int, hs: int, fmt: int = NV12,
            desc: int | None = None) -> int:
        d = desc if desc is not None else acl.media.dvpp_create_pic_desc()
        if desc is None:
            self.descs.append(d)
        m = acl.media
        for setter, v in ((m.dvpp_set_pic_desc_data, data), (m.dvpp_set_pic_desc_size, size),
                          (m.dvpp_set_pic_desc_format, fmt), (m.dvpp_set_pic_desc_width, w),
                          (m.dvpp_set_pic_desc_height, h), (m.dvpp_set_pic_desc_width_stride, ws),
                          (m.dvpp_set_pic_desc_height_stride, hs)):
            assert setter(d, v) == 0
        return d

    def yuv_pic(self, w: int, h: int, fmt: int = NV12, fill: int | None = None) -> tuple[int, int, int]:
        ws, hs = -(-w // 16) * 16, -(-h // 2) * 2
        size = ws * hs * 3 // 2
        p = self.malloc(size)
        if fill is not None:
            assert acl.rt.memset(p, size, fill, size) == 0
        return self.pic(p, size, w, h, ws, hs, fmt), p, size

    def roi(self, left: int, right: int, top: int, bottom: int) -> int:
        h = acl.media.dvpp_create_roi_config(left, right, top, bottom)
        assert h
        self.rois.append(h)
        return h

    def sync(self) -> int:
        return acl.rt.synchronize_stream(self.stream)

    def close(self) -> None:
        assert self.sync() == 0
        for r in self.rois:
            assert acl.media.dvpp_destroy_roi_config(r) == 0
        for d in self.descs:
            assert acl.media.dvpp_destroy_pic_desc(d) == 0
        for p in self.bufs:
            assert acl.media.dvpp_free(p) == 0
        assert acl.media.dvpp_destroy_channel(self.chan) == 0
        assert acl.media.dvpp_destroy_channel_desc(self.chan) == 0
        assert acl.rt.destroy_stream(self.stream) == 0


@pytest.fixture
def dv(dev):
    d = Dvpp()
    yield d
    d.close()


def planes(buf: np.ndarray, w: int, h: int, ws: int, hs: int, fmt: int = NV12):
    y = buf[: ws * hs].reshape(hs, ws)[:h, :w].astype(np.int16)
    uv = buf[ws * hs : ws * hs * 3 // 2].reshape(hs // 2, ws)[: h // 2, :w].astype(np.int16)
    u, v = uv[:, 0::2], uv[:, 1::2]
    return (y, u, v) if fmt == NV12 else (y, v, u)


def decode(dv: Dvpp, jpeg: bytes, fmt: int = NV12) -> tuple[int, int, int, int, int, int, int]:
    """JPEGD the way Ascend/samples does it: returns (desc, out_ptr, size, w, h, ws, hs)."""
    src = dv.upload(jpeg)
    w, h, comps, ret = acl.media.dvpp_jpeg_get_image_info(acl.util.bytes_to_ptr(jpeg), len(jpeg))
    assert ret == 0 and comps == 3
    size, ret = acl.media.dvpp_jpeg_predict_dec_size(acl.util.bytes_to_ptr(jpeg), len(jpeg), fmt)
    assert ret == 0
    out = dv.malloc(size)
    desc = acl.media.dvpp_create_pic_desc()
    dv.descs.append(desc)
    assert acl.media.dvpp_set_pic_desc_data(desc, out) == 0
    assert acl.media.dvpp_set_pic_desc_size(desc, size) == 0
    assert acl.media.dvpp_set_pic_desc_format(desc, fmt) == 0
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, src, len(jpeg), desc, dv.stream) == 0
    assert dv.sync() == 0
    m = acl.media
    assert m.dvpp_get_pic_desc_ret_code(desc) == 0
    return (desc, out, size, m.dvpp_get_pic_desc_width(desc), m.dvpp_get_pic_desc_height(desc),
            m.dvpp_get_pic_desc_width_stride(desc), m.dvpp_get_pic_desc_height_stride(desc))


def test_dvpp_malloc_rounding_alignment_and_free(dev):
    free0, total, _ = acl.rt.get_mem_info(0)
    ptrs = []
    for n in (1, 100, 4096):
        p, ret = acl.media.dvpp_malloc(n)
        assert ret == 0 and p % 128 == 0  # start 128-B aligned
        ptrs.append(p)
    free1, _, _ = acl.rt.get_mem_info(0)
    assert free0 - free1 == sum((n + 31) // 32 * 32 + 32 for n in (1, 100, 4096))  # ALIGN_UP(n, 32) + 32
    assert acl.media.dvpp_malloc(0) == (0, 100000)
    q, _ = acl.rt.malloc(64, 2)
    assert acl.media.dvpp_free(q) == 107000 and acl.rt.free(ptrs[0]) == 107000  # each API frees its own
    assert acl.rt.free(q) == 0
    for p in ptrs:
        assert acl.media.dvpp_free(p) == 0
    assert acl.media.dvpp_free(ptrs[0]) == 107000  # double free
    assert acl.rt.get_mem_info(0)[0] == free0


def test_pic_desc_every_setter_and_getter(dev):
    m = acl.media
    d = m.dvpp_create_pic_desc()
    values = {"data": 0x1000, "size": 12345, "format": NV21, "width": 640, "height": 480,
              "width_stride": 640, "height_stride": 480}
    for k, v in values.items():
        assert getattr(m, f"dvpp_set_pic_desc_{k}")(d, v) == 0
    assert {k: getattr(m, f"dvpp_get_pic_desc_{k}")(d) for k in values} == values
    assert m.dvpp_get_pic_desc_ret_code(d) == 0
    assert sim.leaks()["dvpp_descs"] == [d]
    assert m.dvpp_destroy_pic_desc(d) == 0
    assert m.dvpp_get_pic_desc_width(d) == 0 and "not a live pic desc" in acl.get_recent_err_msg()
    assert m.dvpp_set_pic_desc_width(d, 4) == 100000 and m.dvpp_destroy_pic_desc(d) == 100000
    b = m.dvpp_create_batch_pic_desc(3)
    inner = [m.dvpp_get_pic_desc(b, i) for i in range(3)]
    assert all(inner) and len(set(inner)) == 3 and m.dvpp_get_pic_desc(b, 3) == 0
    assert m.dvpp_destroy_pic_desc(inner[0]) == 100000  # owned by the batch
    assert m.dvpp_set_pic_desc_width(inner[1], 64) == 0 and m.dvpp_get_pic_desc_width(inner[1]) == 64
    r = m.dvpp_create_roi_config(0, 9, 0, 5)
    rc = m.dvpp_create_resize_config()
    jc = m.dvpp_create_jpege_config()
    assert m.dvpp_set_resize_config_interpolation(rc, 1) == 0 and m.dvpp_get_resize_config_interpolation(rc) == 1
    assert m.dvpp_set_resize_config_interpolation(rc, 9) == 100000
    assert m.dvpp_set_jpege_config_level(jc, 80) == 0 and m.dvpp_get_jpege_config_level(jc) == 80
    assert m.dvpp_set_jpege_config_level(jc, 101) == 100000
    assert m.dvpp_set_roi_config(r, 2, 11, 2, 7) == 0 and m.dvpp_set_roi_config_left(r, 4) == 0
    assert sorted(sim.leaks()["dvpp_descs"]) == sorted([b, r, rc, jc])
    for destroy, h in ((m.dvpp_destroy_batch_pic_desc, b), (m.dvpp_destroy_roi_config, r),
                       (m.dvpp_destroy_resize_config, rc), (m.dvpp_destroy_jpege_config, jc)):
        assert destroy(h) == 0 and destroy(h) == 100000
    assert m.dvpp_get_pic_desc_width(inner[1]) == 0  # gone with its batch
    ch = m.dvpp_create_channel_desc()
    assert m.dvpp_destroy_channel(ch) == 100000  # not created
    assert m.dvpp_create_channel(ch) == 0 and m.dvpp_create_channel(ch) == 100000
    assert m.dvpp_destroy_channel_desc(ch) == 100000  # destroy the channel first
    assert m.dvpp_destroy_channel(ch) == 0 and m.dvpp_destroy_channel_desc(ch) == 0
    assert "dvpp_descs" not in sim.leaks()


@pytest.mark.parametrize("soc,align", [("Ascend310", 128), ("Ascend310P3", 64)])
@pytest.mark.parametrize("fmt", [NV12, NV21], ids=["NV12", "NV21"])
def test_jpeg_decode_matches_pillow_with_dvpp_strides(dv, soc, align, fmt):
    sim.configure(soc_name=soc)
    try:
        jpeg = _jpeg(301, 203)  # odd sizes: JPEGD rounds the output down to even
        desc, out, size, w, h, ws, hs = decode(dv, jpeg, fmt)
    finally:
        sim.configure(soc_name="Ascend310P3")
    assert (w, h) == (300, 202)
    assert ws == -(-300 // align) * align and hs == 208 and size == ws * hs * 3 // 2
    y, u, v = planes(dv.download(out, size), w, h, ws, hs, fmt)
    ref = _ref_ycbcr(Image.open(io.BytesIO(jpeg)))[:h, :w]
    assert np.abs(y - ref[:, :, 0]).max() <= 2
    for got, k in ((u, 1), (v, 2)):
        d = np.abs(got - _sub2(ref[:, :, k]))
        assert d.mean() <= 1.0 and d.max() <= 3


def test_decode_output_is_stale_until_the_stream_is_synchronised(dv):
    jpeg = _jpeg(128, 64)
    src = dv.upload(jpeg)
    size, _ = acl.media.dvpp_jpeg_predict_dec_size(acl.util.bytes_to_ptr(jpeg), len(jpeg), NV12)
    out = dv.malloc(size)
    desc = dv.pic(out, size, 0, 0, 0, 0)
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, src, len(jpeg), desc, dv.stream) == 0
    assert (dv.download(out, size) == 0xCD).all()  # a client that does not synchronise reads old memory
    assert acl.media.dvpp_get_pic_desc_width(desc) == 0
    assert dv.sync() == 0
    assert acl.media.dvpp_get_pic_desc_width(desc) == 128
    assert not (dv.download(out, size)[: 128 * 64] == 0xCD).all()


def test_unsupported_jpegs_are_148052(dv):
    prog = _jpeg(64, 64, progressive=True)
    p = acl.util.bytes_to_ptr(prog)
    assert acl.media.dvpp_jpeg_get_image_info(p, len(prog))[3] == 148052
    assert acl.media.dvpp_jpeg_predict_dec_size(p, len(prog), NV12)[1] == 148052
    junk = b"\x89PNG not a jpeg at all" * 4
    assert acl.media.dvpp_jpeg_get_image_info(acl.util.bytes_to_ptr(junk), len(junk))[3] == 148052
    # decode reads the data when the stream runs: the code comes back at synchronisation and in ret_code
    src = dv.upload(prog)
    out = dv.malloc(64 * 64 * 2)
    desc = dv.pic(out, 64 * 64 * 2, 0, 0, 0, 0)
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, src, len(prog), desc, dv.stream) == 0
    assert dv.sync() == 148052
    assert acl.media.dvpp_get_pic_desc_ret_code(desc) == 148052
    small = _jpeg(16, 16)  # JPEGD: 32x32 at least
    src2 = dv.upload(small)
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, src2, len(small), desc, dv.stream) == 0
    assert dv.sync() == 148052


def test_jpeg_decode_submission_checks(dv):
    jpeg = _jpeg(64, 64)
    src = dv.upload(jpeg)
    out = dv.malloc(128 * 64 * 3 // 2)
    desc = dv.pic(out, 128 * 64 * 3 // 2, 0, 0, 0, 0)
    host = np.frombuffer(jpeg, np.uint8).copy()
    hp = acl.util.numpy_to_ptr(host)
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, hp, len(jpeg), desc, dv.stream) == 100000  # not DVPP memory
    assert "dvpp_malloc" in acl.get_recent_err_msg()
    ch = acl.media.dvpp_create_channel_desc()
    assert acl.media.dvpp_jpeg_decode_async(ch, src, len(jpeg), desc, dv.stream) == 100000  # channel not created
    assert acl.media.dvpp_destroy_channel_desc(ch) == 0
    assert acl.media.dvpp_set_pic_desc_format(desc, 0) == 0
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, src, len(jpeg), desc, dv.stream) == 100000  # YUV400 output
    assert acl.media.dvpp_set_pic_desc_format(desc, NV12) == 0
    assert acl.media.dvpp_set_pic_desc_size(desc, 100) == 0  # too small for 64x64 at 64x64 strides
    assert acl.media.dvpp_jpeg_decode_async(dv.chan, src, len(jpeg), desc, dv.stream) == 0
    assert dv.sync() == 100000 and acl.media.dvpp_get_pic_desc_ret_code(desc) == 100000


def _rgb_resized(jpeg: bytes, box, size):
    return Image.open(io.BytesIO(jpeg)).convert("RGB").resize(size, Image.Resampling.BILINEAR, box=box)


def _assert_like(y, u, v, ref_rgb):
    ref = _ref_ycbcr(ref_rgb)
    assert np.abs(y - ref[:, :, 0]).max() <= 3
    for got, k in ((u, 1), (v, 2)):
        d = np.abs(got - _sub2(ref[:, :, k]))
        assert d.mean() <= 1.5 and d.max() <= 8, (d.mean(), d.max())


def test_vpc_resize_matches_pillow(dv):
    jpeg = _jpeg(320, 240)
    desc, out, size, w, h, ws, hs = decode(dv, jpeg)
    in_desc = dv.pic(out, size, w, h, ws, hs)
    out_desc, optr, osize = dv.yuv_pic(224, 224)
    rc = acl.media.dvpp_create_resize_config()
    assert acl.media.dvpp_vpc_resize_async(dv.chan, in_desc, out_desc, rc, dv.stream) == 0
    assert acl.media.dvpp_set_pic_desc_width(in_desc, 2) == 0  # the task carries the descs as submitted
    assert acl.media.dvpp_set_pic_desc_data(out_desc, 0) == 0
    assert dv.sync() == 0 and acl.media.dvpp_get_pic_desc_ret_code(out_desc) == 0
    y, u, v = planes(dv.download(optr, osize), 224, 224, 224, 224)
    _assert_like(y, u, v, _rgb_resized(jpeg, (0, 0, w, h), (224, 224)))
    assert acl.media.dvpp_destroy_resize_config(rc) == 0


def test_vpc_crop_and_crop_and_paste(dv):
    jpeg = _jpeg(256, 192)
    desc, out, size, w, h, ws, hs = decode(dv, jpeg)
    in_desc = dv.pic(out, size, w, h, ws, hs)
    # crop (32..159, 16..111) resized to the whole 64x48 output
    out_desc, optr, osize = dv.yuv_pic(64, 48)
    crop = dv.roi(32, 159, 16, 111)
    assert acl.media.dvpp_vpc_crop_async(dv.chan, in_desc, out_desc, crop, dv.stream) == 0
    assert dv.sync() == 0
    y, u, v = planes(dv.download(optr, osize), 64, 48, 64, 48)
    _assert_like(y, u, v, _rgb_resized(jpeg, (32, 16, 160, 112), (64, 48)))
    # crop and paste into (32..95, 8..55) of a 128x64 picture filled with 0x10: the rest stays
    pdesc, pptr, psize = dv.yuv_pic(128, 64, fill=0x10)
    paste = dv.roi(32, 95, 8, 55)
    assert acl.media.dvpp_vpc_crop_and_paste_async(dv.chan, in_desc, pdesc, crop, paste, dv.stream) == 0
    assert dv.sync() == 0
    y, u, v = planes(dv.download(pptr, psize), 128, 64, 128, 64)
    _assert_like(y[8:56, 32:96], u[4:28, 16:48], v[4:28, 16:48], _rgb_resized(jpeg, (32, 16, 160, 112), (64, 48)))
    outside = np.ones((64, 128), bool)
    outside[8:56, 32:96] = False
    assert (y[outside] == 0x10).all()
    assert (u[:4] == 0x10).all() and (v[:, :16] == 0x10).all()


def test_vpc_constraints_are_refused_before_anything_runs(dv):
    jpeg = _jpeg(256, 192)
    desc, out, size, w, h, ws, hs = decode(dv, jpeg)
    in_desc = dv.pic(out, size, w, h, ws, hs)
    out_desc, optr, osize = dv.yuv_pic(64, 48, fill=0x22)
    rc = acl.media.dvpp_create_resize_config()
    m = acl.media

    def resize():
        return m.dvpp_vpc_resize_async(dv.chan, in_desc, out_desc, rc, dv.stream)

    def crop(*offsets):
        roi = dv.roi(*offsets)
        return m.dvpp_vpc_crop_async(dv.chan, in_desc, out_desc, roi, dv.stream)

    def paste(*offsets):
        crop_roi, paste_roi = dv.roi(0, 63, 0, 47), dv.roi(*offsets)
        return m.dvpp_vpc_crop_and_paste_async(dv.chan, in_desc, out_desc, crop_roi, paste_roi, dv.stream)

    cases = [
        (lambda: m.dvpp_set_pic_desc_width(out_desc, 63), resize),  # odd width
        (lambda: m.dvpp_set_pic_desc_width_stride(out_desc, 72), resize),  # stride not a multiple of 16
        (lambda: m.dvpp_set_pic_desc_size(out_desc, 64 * 48), resize),  # buffer < stride_w * stride_h * 3/2
        (lambda: m.dvpp_set_pic_desc_format(out_desc, 99), resize),  # not a pixel format
        (lambda: m.dvpp_set_pic_desc_height_stride(in_desc, 193), resize),  # odd height stride
    ]
    for breaks, call in cases:
        assert breaks() == 0
        assert call() == 100000, acl.get_recent_err_msg()
        dv.pic(optr, osize, 64, 48, 64, 48, desc=out_desc)  # repair both
        dv.pic(out, size, w, h, ws, hs, desc=in_desc)
    assert crop(1, 63, 0, 47) == 100000  # left odd
    assert crop(0, 62, 0, 47) == 100000  # right even
    assert crop(0, 63, 1, 47) == 100000 and crop(0, 63, 0, 46) == 100000  # top odd, bottom even
    assert crop(0, 7, 0, 47) == 100000  # 8 wide: less than 10
    assert crop(0, 257, 0, 47) == 100000  # leaves the picture
    assert paste(8, 63, 0, 47) == 100000  # paste left not 16-aligned
    assert paste(0, 65, 0, 47) == 100000  # leaves the output
    # scaling limits: 256 -> 6 rows is beyond 1/32
    tiny, tptr, tsize = dv.yuv_pic(64, 6)
    assert m.dvpp_vpc_resize_async(dv.chan, in_desc, tiny, rc, dv.stream) == 0  # 192 -> 6 = 1/32: allowed
    small_desc, sptr, ssize = dv.yuv_pic(32, 6)
    big, bptr, bsize = dv.yuv_pic(1024, 512)
    assert m.dvpp_vpc_resize_async(dv.chan, small_desc, big, rc, dv.stream) == 100000  # 32 -> 1024 is 32x > 16
    assert "[1/32, 16]" in acl.get_recent_err_msg()
    # memory that is not DVPP memory, a dead config, a channel that is not created
    q, _ = acl.rt.malloc(osize, 2)
    assert m.dvpp_set_pic_desc_data(out_desc, q) == 0 and resize() == 100000
    assert "dvpp_malloc" in acl.get_recent_err_msg()
    assert m.dvpp_set_pic_desc_data(out_desc, optr) == 0
    assert acl.rt.free(q) == 0
    assert m.dvpp_vpc_resize_async(dv.chan, in_desc, out_desc, 12345, dv.stream) == 100000
    assert m.dvpp_set_pic_desc_format(out_desc, 12) == 0  # RGB888: documented, not simulated
    with pytest.raises(sim.NotImplementedInSimulator):
        resize()
    assert m.dvpp_set_pic_desc_format(out_desc, NV12) == 0
    assert m.dvpp_vpc_resize_async(dv.chan, in_desc, out_desc, rc, 999) == 107000  # unknown stream
    assert dv.sync() == 0
    y, _, _ = planes(dv.download(optr, osize), 64, 48, 64, 48)
    assert (y == 0x22).all()  # nothing refused ever ran on the output
    assert m.dvpp_destroy_resize_config(rc) == 0


def test_batch_crop_and_batch_crop_and_paste(dv):
    m = acl.media
    jpeg = _jpeg(256, 192)
    desc, out, size, w, h, ws, hs = decode(dv, jpeg)
    src_b, dst_b, dst2_b = (m.dvpp_create_batch_pic_desc(n) for n in (1, 3, 3))
    dv.pic(out, size, w, h, ws, hs, desc=m.dvpp_get_pic_desc(src_b, 0))
    boxes = [(0, 63, 0, 47), (64, 191, 32, 127), (128, 255, 96, 191)]
    crops = [dv.roi(*b) for b in boxes]
    outs = []
    for i in range(3):
        o = dv.malloc(64 * 48 * 3 // 2)
        dv.pic(o, 64 * 48 * 3 // 2, 64, 48, 64, 48, desc=m.dvpp_get_pic_desc(dst_b, i))
        o2 = dv.malloc(64 * 48 * 3 // 2)
        assert acl.rt.memset(o2, 64 * 48 * 3 // 2, 0x10, 64 * 48 * 3 // 2) == 0
        dv.pic(o2, 64 * 48 * 3 // 2, 64, 48, 64, 48, desc=m.dvpp_get_pic_desc(dst2_b, i))
        outs.append((o, o2))
    assert m.dvpp_vpc_batch_crop_async(dv.chan, src_b, [2], dst_b, crops, dv.stream) == (0, 100000)  # sum != 3
    assert m.dvpp_vpc_batch_crop_async(dv.chan, src_b, [3, 0], dst_b, crops, dv.stream)[1] == 100000  # one per input
    assert m.dvpp_vpc_batch_crop_async(dv.chan, src_b, [3], dst_b, crops, dv.stream) == (dst_b, 0)
    pastes = [dv.roi(16, 47, 8, 31) for _ in range(3)]
    assert m.dvpp_vpc_batch_crop_and_paste_async(dv.chan, src_b, [3], dst2_b, crops, pastes, dv.stream) == (dst2_b, 0)
    assert dv.sync() == 0
    for (o, o2), (left, right, top, bottom), i in zip(outs, boxes, range(3)):
        box = (left, top, right + 1, bottom + 1)
        assert m.dvpp_get_pic_desc_ret_code(m.dvpp_get_pic_desc(dst_b, i)) == 0
        y, u, v = planes(dv.download(o, 64 * 48 * 3 // 2), 64, 48, 64, 48)
        _assert_like(y, u, v, _rgb_resized(jpeg, box, (64, 48)))
        y2, u2, v2 = planes(dv.download(o2, 64 * 48 * 3 // 2), 64, 48, 64, 48)
        _assert_like(y2[8:32, 16:48], u2[4:16, 8:24], v2[4:16, 8:24], _rgb_resized(jpeg, box, (32, 24)))
        assert (y2[:8] == 0x10).all() and (y2[:, :16] == 0x10).all()
    for bd in (src_b, dst_b, dst2_b):
        assert m.dvpp_destroy_batch_pic_desc(bd) == 0


def test_jpeg_encode_round_trip(dv):
    m = acl.media
    jpeg = _jpeg(320, 240)
    desc, out, size, w, h, ws, hs = decode(dv, jpeg)
    in_desc = dv.pic(out, size, w, h, ws, hs)
    cfg = m.dvpp_create_jpege_config()
    assert m.dvpp_set_jpege_config_level(cfg, 100) == 0
    osize, ret = m.dvpp_jpeg_predict_enc_size(in_desc, cfg)
    assert ret == 0 and osize > 0
    obuf = dv.malloc(osize)
    size_arr = np.array([osize], np.uint32)
    sp = acl.util.numpy_to_ptr(size_arr)
    assert m.dvpp_jpeg_encode_async(dv.chan, in_desc, obuf, sp, cfg, dv.stream) == 0
    assert size_arr[0] == osize  # not yet
    assert dv.sync() == 0
    n = int(size_arr[0])
    assert 0 < n < osize
    encoded = dv.download(obuf, n).tobytes()
    assert encoded[:2] == b"\xff\xd8"
    again = Image.open(io.BytesIO(encoded))
    assert again.size == (320, 240) and not again.info.get("progressive")
    y0, _, _ = planes(dv.download(out, size), w, h, ws, hs)
    diff = np.abs(_ref_ycbcr(again)[:, :, 0] - y0)
    assert diff.mean() <= 1.5
    # JPEGE input rules: the height stride must be the height or the height aligned to 16
    assert m.dvpp_set_pic_desc_height_stride(in_desc, 250) == 0
    assert m.dvpp_jpeg_predict_enc_size(in_desc, cfg)[1] == 100000
    assert m.dvpp_jpeg_encode_async(dv.chan, in_desc, obuf, sp, cfg, dv.stream) == 100000
    assert m.dvpp_destroy_jpege_config(cfg) == 0
