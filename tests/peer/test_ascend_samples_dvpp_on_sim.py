"""Real Ascend/samples DVPP and async-memory Python samples, unchanged, on the simulator.

Opt-in: third-party code is not committed here. Point ``ASCEND_SAMPLES_DIR`` at a checkout of
https://github.com/Ascend/samples (tested at commit fc2aea93e48be8f8cee51d0c6c1b13a08155f83a);
without it these tests skip. Nothing of the samples is patched: the simulator is installed as
``acl`` and the samples' own code runs.

* ``python/level1_single_api/1_acl/2_memory_management/memcpy_host_device_async_python`` and
  ``memcpy_host_DVPP_python``: run as scripts (``runpy``, their own ``main()``), in a subprocess,
  with small ``--memory_size`` and one release cycle; the output they log (memset to 7, copied
  to DVPP memory and back) and "run success!" are checked, then the simulator's leak report.
* ``python/level2_simple_inference/1_classification/vpc_jpeg_resnet50_imagenet_classification/src/
  acl_dvpp_process.py``: its ``Dvpp`` class driven the way the sample's ``main.py`` drives it
  (JPEG decode, then VPC resize / crop / crop-and-paste / batch crop / batch crop-and-paste, and
  JPEG encode of a YUV file), on a JPEG made here, without the ResNet-50 model (no .om is
  available off a device). Outputs are compared with Pillow's decode and resize.
"""
from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acl_bundle import sim

SAMPLES = Path(os.environ.get("ASCEND_SAMPLES_DIR", "/nonexistent"))
MEM = SAMPLES / "python/level1_single_api/1_acl/2_memory_management"
VPC_JPEG = SAMPLES / "python/level2_simple_inference/1_classification/vpc_jpeg_resnet50_imagenet_classification/src"
pytestmark = pytest.mark.skipif(not (VPC_JPEG / "acl_dvpp_process.py").is_file(),
                                reason="set ASCEND_SAMPLES_DIR to a checkout of Ascend/samples to run its DVPP samples")
ROOT = Path(__file__).resolve().parents[2]
RUNNER = """
import runpy, sys
from acl_bundle import sim
sim.install()
path = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(path, run_name="__main__")
finally:
    print("LEAKS=" + repr(sim.leaks()), flush=True)
"""


def _run_script(script: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", RUNNER, str(script), *args], capture_output=True, text=True,
                       timeout=120, env=env, cwd=str(script.parent))
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "run success!" in out, out
    assert "LEAKS={}" in out, out
    return out


def test_memcpy_host_device_async_sample():
    """memset_async on malloc_host memory, memcpy_async H2D into dvpp_malloc memory and back, each synchronised."""
    out = _run_script(MEM / "memcpy_host_device_async_python/src/memcpy_host_device_async_python.py",
                      "--memory_size", "4096", "--release_cycle", "1", "--number_of_cycles", "1")
    assert re.search(r"At first memset host data is \[7 7 7 \.\.\. 7 7 7\]", out), out
    assert re.search(r"At memcpy device data is \[7 7 7 \.\.\. 7 7 7\]", out), out
    assert "failed" not in out


def test_memcpy_host_dvpp_sample():
    out = _run_script(MEM / "memcpy_host_DVPP_python/src/memcpy_host_dvpp.py",
                      "--memory_size", "4096", "--release_cycle", "1", "--number_of_cycles", "1")
    assert re.search(r"At first memset host data is \[7 7 7 \.\.\. 7 7 7\]", out), out
    assert re.search(r"At memcpy device data is \[7 7 7 \.\.\. 7 7 7\]", out), out
    assert "failed" not in out


# ---- vpc_jpeg_resnet50_imagenet_classification: the Dvpp class ------------------------------------
Image = pytest.importorskip("PIL.Image") if (VPC_JPEG / "acl_dvpp_process.py").is_file() else None
W, H, MW, MH = 1024, 768, 224, 224  # the sample's model input is 224x224


def _picture() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    rgb = np.stack([255 * xx / (W - 1), 255 * yy / (H - 1), 128 + 100 * np.sin(xx / 17.0) * np.cos(yy / 23.0)], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _ycbcr(im) -> np.ndarray:
    return np.asarray(im.convert("YCbCr"), dtype=np.int16)


def _luma(buf: np.ndarray, w: int, h: int, ws: int | None = None) -> np.ndarray:
    ws = ws or w
    return buf.view(np.uint8)[: ws * h].reshape(h, ws)[:, :w].astype(np.int16)


def _resized(jpeg: bytes, box, size):
    return Image.open(io.BytesIO(jpeg)).convert("RGB").resize(size, Image.Resampling.BILINEAR, box=box)


@pytest.fixture
def dvpp_sample(monkeypatch, tmp_path):
    """The sample's Sample.init_resource (init, set_device, create_context, create_stream), its Dvpp, then
    its release_resource order (Dvpp, stream, context, device, finalize)."""
    sim.install()
    sim.configure(soc_name="Ascend310")  # the sample's test script targets Atlas 300 (Ascend 310)
    monkeypatch.syspath_prepend(str(VPC_JPEG))
    for n in ("constant", "acl_dvpp_process"):
        sys.modules.pop(n, None)
    mod = importlib.import_module("acl_dvpp_process")
    acl = sim.acl
    assert acl.init() == 0 and acl.rt.set_device(0) == 0
    ctx, _ = acl.rt.create_context(0)
    stream, _ = acl.rt.create_stream()
    held = [mod.Dvpp(stream, MW, MH), tmp_path]  # pytest keeps the fixture value: hand out a list it can empty
    try:
        yield held
    finally:
        held.clear()  # main.py's `del self.dvpp_process`: Dvpp.__del__ releases its channel, configs, descs, buffers
        import gc
        gc.collect()
        assert acl.rt.destroy_stream(stream) == 0 and acl.rt.destroy_context(ctx) == 0
        assert acl.rt.reset_device(0) == 0 and acl.finalize() == 0
        for n in ("constant", "acl_dvpp_process"):
            sys.modules.pop(n, None)
        sim.uninstall()
        sim.configure(soc_name="Ascend310P3")


def _decode(dvpp, tmp_path) -> tuple[bytes, Path]:
    out = io.BytesIO()
    Image.fromarray(_picture()).save(out, "JPEG", quality=95)
    jpeg = out.getvalue()
    path = tmp_path / f"pic_{W}_{H}.jpg"
    path.write_bytes(jpeg)
    yuv, w, h = dvpp.process_jpeg_dec(str(path))  # as main.py: decode, then destroy_jpeg_resource
    dvpp.destroy_jpeg_resource()
    assert (w, h) == (W, H)
    ref = _ycbcr(Image.open(io.BytesIO(jpeg)))
    assert np.abs(_luma(yuv, W, H) - ref[:, :, 0]).max() <= 2  # strides 1024 x 768 (128 / 16 aligned)
    yuv_path = tmp_path / f"pic_{W}_{H}.yuv"
    yuv.tofile(yuv_path)
    return jpeg, yuv_path


def test_sample_dvpp_resize_crop_and_paste(dvpp_sample):
    dvpp, tmp_path = dvpp_sample
    jpeg, yuv_path = _decode(dvpp, tmp_path)
    out, _, _ = dvpp.process_vpc_resize(str(yuv_path), W, H)
    ref = _ycbcr(_resized(jpeg, (0, 0, W, H), (MW, MH)))
    assert np.abs(_luma(out, MW, MH) - ref[:, :, 0]).max() <= 3
    dvpp.destroy_crop_resource()
    out, _, _ = dvpp.process_vpc_crop(str(yuv_path), W, H)  # crop (224..1023, 224..767) -> 224x224
    ref = _ycbcr(_resized(jpeg, (MW, MH, W, H), (MW, MH)))
    assert np.abs(_luma(out, MW, MH) - ref[:, :, 0]).max() <= 3
    dvpp.destroy_crop_resource()
    out, _, _ = dvpp.process_vpc_crop_paste(str(yuv_path), W, H)
    # the same crop pasted into (32..215, 64..215) of a 512x384 output
    y = _luma(out, W // 2, H // 2)
    ref = _ycbcr(_resized(jpeg, (MW, MH, W, H), (184, 152)))
    assert np.abs(y[64:216, 32:216] - ref[:, :, 0]).max() <= 3
    dvpp.destroy_crop_resource()


def test_sample_dvpp_batch_crop(dvpp_sample):
    dvpp, tmp_path = dvpp_sample
    jpeg, yuv_path = _decode(dvpp, tmp_path)
    outs = dvpp.process_vpc_batchcrop_asyn(str(yuv_path), 1, 8, W, H)
    assert len(outs) == 8
    boxes = [(W - MW, H - MH, W, H)] + [(0, H - MH, W - MW, H)] * 7
    for o, box in zip(outs, boxes):
        ref = _ycbcr(_resized(jpeg, box, (MW, MH)))
        assert np.abs(_luma(o, MW, MH) - ref[:, :, 0]).max() <= 3
    dvpp.destroy_crop_resource()


def test_sample_dvpp_batch_crop_and_paste(dvpp_sample):
    # a Dvpp of its own, as main.py runs one dvpp_type per process (destroy_crop_resource zeroes
    # the ROI lists' entries but keeps them, so a second batch call would pass NULL areas)
    dvpp, tmp_path = dvpp_sample
    jpeg, yuv_path = _decode(dvpp, tmp_path)
    boxes = [(W - MW, H - MH, W, H)] + [(0, H - MH, W - MW, H)] * 7
    outs = dvpp.process_vpc_batchcrop_paste_asyn(str(yuv_path), 1, 8, W, H)
    for o, box in zip(outs, boxes):
        ref = _ycbcr(_resized(jpeg, box, (MW // 2, MH // 2)))
        assert np.abs(_luma(o, MW, MH)[MH // 2:, MW // 2:] - ref[:, :, 0]).max() <= 3
    dvpp.destroy_crop_resource()


def test_sample_dvpp_jpeg_encode(dvpp_sample):
    dvpp, tmp_path = dvpp_sample
    jpeg, yuv_path = _decode(dvpp, tmp_path)
    encoded = dvpp.process_jpeg_enc(str(yuv_path), W, H).tobytes()  # as main.py with a .yuv input
    dvpp.destroy_jpeg_resource()
    again = Image.open(io.BytesIO(encoded))
    assert again.size == (W, H)
    src = np.fromfile(yuv_path, np.uint8)
    assert np.abs(_ycbcr(again)[:, :, 0] - _luma(src, W, H)).mean() <= 1.5


