"""Real peer code on the simulator: Ascend/samples' acllite (``python/common/acllite/``).

Opt-in: third-party code is not committed here, so point ``ACLLITE_DIR`` at a checkout of
that folder (acllite_model.py, acllite_resource.py, acllite_utils.py, acllite_image.py,
acllite_logger.py, constants.py); without it these tests skip.

acllite is imported before ``acl.init`` as in its samples, so its import-time
``acl.rt.get_run_mode()`` (``AclLiteImage._run_mode``) must already answer.
acllite is used exactly as its samples use it: ``AclLiteResource().init()``,
``AclLiteModel(path)``, ``model.execute([x])``, then ``del`` of the model and the resource
(acllite releases everything in ``__del__``: ``resource_list.destroy()``, destroy stream and
context, ``reset_device``, ``finalize``). Outputs are compared with an independent numpy
forward pass. Nothing of acllite is patched; only the simulator is installed as ``acl``.

What acllite itself leaves behind (checked, then freed by hand so the autouse leak check
passes): the device buffers it mallocs for numpy inputs (``_input_buffer``), on a
dynamic-batch model one ``ascend_mbatch_shape_data`` buffer per execute, and the output pic
desc of each ``AclLiteImageProc.jpegd``. acllite never
frees either; it relies on ``reset_device``/process exit to reclaim device memory.
"""
from __future__ import annotations

import gc
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from acl_bundle import sim
from acl_bundle._constants import ACL_DEVICE, ACL_HOST
from acl_bundle.sim import builder, models

ACLLITE_DIR = Path(os.environ.get("ACLLITE_DIR", "/nonexistent"))
pytestmark = pytest.mark.skipif(not (ACLLITE_DIR / "acllite_model.py").is_file(),
                                reason="set ACLLITE_DIR to Ascend/samples python/common/acllite to run acllite itself")
# acllite's modules import each other by bare name (import constants, acllite_utils, ...)
ACLLITE_MODULES = ("constants", "acllite_logger", "acllite_utils", "acllite_resource", "acllite_image", "acllite_model",
                   "acllite_imageproc")


@pytest.fixture
def acllite(monkeypatch):
    """Install the simulator as ``acl`` and import acllite fresh against it; undo both after."""
    pytest.importorskip("PIL", reason="acllite_image imports Pillow")
    sim.install()
    monkeypatch.syspath_prepend(str(ACLLITE_DIR))
    saved = {n: sys.modules.pop(n) for n in ACLLITE_MODULES if n in sys.modules}
    try:
        mods = {n: importlib.import_module(n) for n in ACLLITE_MODULES}
        yield mods
    finally:
        for n in ACLLITE_MODULES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        sim.uninstall()
        sim.configure(run_mode=ACL_HOST)


def _plain_model(tmp_path: Path, *, batch_sizes=None, seed=0):
    model, weights = models.mlp((8, 16, 4), seed=seed)
    om, _ = builder.save(builder.build_plain(model, batch_sizes=batch_sizes), tmp_path / "mlp.om")
    return str(om), weights


def _free_what_acllite_leaves(model, extra_device_ptrs=()):
    """acllite never frees its input buffers; return their pointers (freed by the caller)."""
    return [item["addr"] for item in model._input_buffer if item["addr"] is not None] + list(extra_device_ptrs)


def _finish(leftover_ptrs):
    """After acllite's own teardown: only the buffers acllite never frees may remain."""
    gc.collect()
    left = sim.leaks()
    assert set(left) <= {"device_blocks"}, left
    assert sorted(left.get("device_blocks", {})) == sorted(leftover_ptrs), (left, leftover_ptrs)
    # Free them with the simulator's own API (a fresh runtime, like a later process would).
    acl = sim.acl
    if leftover_ptrs:
        assert acl.init() == 0 and acl.rt.set_device(0) == 0
        for p in leftover_ptrs:
            assert acl.rt.free(p) == 0, acl.get_recent_err_msg()
        assert acl.rt.reset_device(0) == 0 and acl.finalize() == 0
    assert sim.leaks() == {}


@pytest.mark.parametrize("run_mode", [ACL_HOST, ACL_DEVICE], ids=["ACL_HOST", "ACL_DEVICE"])
@pytest.mark.parametrize("load_type", [0, 1], ids=["load_from_file", "load_from_mem"])
def test_acllite_static_model(acllite, tmp_path, run_mode, load_type):
    sim.configure(run_mode=run_mode)
    AclLiteResource = acllite["acllite_resource"].AclLiteResource
    AclLiteModel = acllite["acllite_model"].AclLiteModel
    om, weights = _plain_model(tmp_path)

    acl_resource = AclLiteResource()
    acl_resource.init()
    model = AclLiteModel(om, load_type)
    rng = np.random.default_rng(1)
    for _ in range(3):  # the second and later calls reuse acllite's input buffer
        x = rng.standard_normal((1, 8)).astype(np.float32)
        result = model.execute([x])
        assert result is not None, sim.acl.get_recent_err_msg()
        assert len(result) == 1 and result[0].shape == (1, 4) and result[0].dtype == np.float32
        np.testing.assert_allclose(result[0], models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    leftover = _free_what_acllite_leaves(model)
    assert len(leftover) == 1

    # acllite's logger went through acl.app_log
    from acl_bundle.sim import _rt
    assert any("Init model resource success" in m for _lvl, m in _rt.app_log_records())

    # release the acllite way: the model first (AclLiteModel.__del__ -> destroy), then the resource
    del model
    del acl_resource
    assert sim.live_resources()["initialized"] is False
    _finish(leftover)


def test_acllite_resource_list_releases_models(acllite, tmp_path):
    """Drop only the resource: its __del__ destroys every registered model before reset_device."""
    AclLiteResource = acllite["acllite_resource"].AclLiteResource
    AclLiteModel = acllite["acllite_model"].AclLiteModel
    om, weights = _plain_model(tmp_path)
    acl_resource = AclLiteResource()
    acl_resource.init()
    m1, m2 = AclLiteModel(om), AclLiteModel(om, 1)
    x = np.arange(8, dtype=np.float32).reshape(1, 8) / 8
    for m in (m1, m2):
        np.testing.assert_allclose(m.execute([x])[0], models.mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    leftover = _free_what_acllite_leaves(m1) + _free_what_acllite_leaves(m2)
    del acl_resource  # resource_list.destroy() -> m1.destroy(), m2.destroy(); then stream/context/device/finalize
    assert sim.leaks().keys() <= {"device_blocks"}
    del m1, m2  # already destroyed: __del__ is a no-op
    _finish(leftover)


def test_acllite_dynamic_batch(acllite, tmp_path):
    """acllite's dynamic-batch path: _execute_with_dynamic_batch_size (as its samples call it)."""
    AclLiteResource = acllite["acllite_resource"].AclLiteResource
    AclLiteModel = acllite["acllite_model"].AclLiteModel
    om, weights = _plain_model(tmp_path, batch_sizes=[1, 2, 4])
    acl_resource = AclLiteResource()
    acl_resource.init()
    model = AclLiteModel(om)
    mb_ptrs = []
    for batch in (4, 2, 1):
        x = np.random.default_rng(batch).standard_normal((4, 8)).astype(np.float32)
        x[batch:] = 0  # acllite copies the whole max-batch input; rows past the batch are ignored
        inputs = [x]
        result = model._execute_with_dynamic_batch_size(inputs, batch)
        assert result is not None, sim.acl.get_recent_err_msg()
        # acllite appended its own {'data','size'} buffer for ascend_mbatch_shape_data to our list
        assert len(inputs) == 2 and set(inputs[1]) == {"data", "size"}
        mb_ptrs.append(inputs[1]["data"])
        # output buffers are sized for the largest batch; acllite returns all of it
        assert result[0].shape == (4, 4)
        np.testing.assert_allclose(result[0][:batch], models.mlp_reference(x[:batch], weights), rtol=1e-5, atol=1e-5)

    # a batch the model does not have: set_dynamic_batch_size answers 145013, acllite returns None
    bad_inputs = [np.zeros((4, 8), np.float32)]
    assert model._execute_with_dynamic_batch_size(bad_inputs, 3) is None
    assert len(bad_inputs) == 2
    mb_ptrs.append(bad_inputs[1]["data"])
    # that failed call also left its input dataset and data buffers alive (acllite does not release
    # _input_dataset on this path); destroy them the acllite way so only device memory remains
    model._release_dataset(model._input_dataset)
    model._input_dataset = None

    leftover = _free_what_acllite_leaves(model, mb_ptrs)
    del model
    del acl_resource
    _finish(leftover)


def test_acllite_image_copies_between_host_and_device(acllite):
    """AclLiteImage: numpy image -> device (copy_data_host_to_device of image.data()), device image ->
    host (copy_to_host: malloc_host + D2H), host -> host, and byte_data_to_np_array of each."""
    const = acllite["constants"]
    utils = acllite["acllite_utils"]
    AclLiteImage = acllite["acllite_image"].AclLiteImage
    # read at import, before acl.init: ACL answers the run mode without init
    assert AclLiteImage._run_mode == const.ACL_HOST
    acl_resource = acllite["acllite_resource"].AclLiteResource()
    acl_resource.init()
    pixels = np.random.default_rng(7).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    expect = pixels.reshape(-1).view(np.int8)  # byte_data_to_np_array gives np.byte
    np_img = AclLiteImage(pixels, 6, 4)
    dev_ptr = utils.copy_data_host_to_device(np_img.data(), np_img.size)
    assert dev_ptr is not None, sim.acl.get_recent_err_msg()
    dev_img = AclLiteImage(dev_ptr, 6, 4, 0, 0, np_img.size, const.MEMORY_DEVICE)
    assert not dev_img.is_local()
    host_img = dev_img.copy_to_host()
    assert host_img is not None and host_img._memory_type == const.MEMORY_HOST and host_img.is_local()
    host_copy = host_img.copy_to_host()  # a local image: host -> host
    for img in (dev_img, host_img, host_copy):
        np.testing.assert_array_equal(img.byte_data_to_np_array(), expect)
    assert len(sim.live_resources()["device_blocks"]) == 1 and len(sim.live_resources()["host_blocks"]) == 2
    del img, host_copy, host_img, dev_img, np_img  # AclLiteImage.__del__ frees device and host memory
    gc.collect()
    assert sim.live_resources()["device_blocks"] == {} and sim.live_resources()["host_blocks"] == {}
    del acl_resource
    _finish([])


def test_acllite_imageproc_jpegd_resize_jpege(acllite, tmp_path):
    """AclLiteImageProc (acl.media): a JPEG file -> copy_to_dvpp -> jpegd (on Ascend310P3: width stride
    aligned to 64, height to 16) -> resize to 224x224 -> jpege; luma compared with Pillow's decode + resize."""
    import io

    from PIL import Image

    AclLiteImage = acllite["acllite_image"].AclLiteImage
    resource = acllite["acllite_resource"].AclLiteResource()
    resource.init()
    proc = acllite["acllite_imageproc"].AclLiteImageProc(resource)
    yy, xx = np.mgrid[0:200, 0:300]
    rgb = np.stack([xx * 255 // 299, yy * 255 // 199, (xx + yy) % 256], -1).astype(np.uint8)
    path = tmp_path / "pic.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    image = AclLiteImage(str(path))
    dvpp_image = image.copy_to_dvpp()
    yuv = proc.jpegd(dvpp_image)
    assert yuv is not None, sim.acl.get_recent_err_msg()
    assert (yuv.width, yuv.height, yuv.align_width, yuv.align_height) == (300, 200, 320, 208)
    resized = proc.resize(yuv, 224, 224)
    assert resized is not None, sim.acl.get_recent_err_msg()
    host = resized.copy_to_host()
    y = host.byte_data_to_np_array().view(np.uint8)[: 224 * 224].reshape(224, 224).astype(np.int16)
    ref = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR).convert("YCbCr")
    assert np.abs(y - np.asarray(ref, dtype=np.int16)[:, :, 0]).max() <= 3
    jpeg = proc.jpege(resized)
    assert jpeg is not None, sim.acl.get_recent_err_msg()
    again = Image.open(io.BytesIO(jpeg.copy_to_host().byte_data_to_np_array().tobytes()))
    assert again.size == (224, 224)
    del again, jpeg, host, resized, yuv, dvpp_image, image  # AclLiteImage.__del__ frees DVPP and host memory
    gc.collect()
    del proc
    del resource  # resource_list.destroy() -> proc.destroy(): channel, configs
    gc.collect()
    # what acllite leaves: jpegd never destroys its output pic desc (resize and jpege destroy theirs)
    left = sim.leaks()
    assert set(left) == {"dvpp_descs"} and len(left["dvpp_descs"]) == 1, left
    assert sim.acl.media.dvpp_destroy_pic_desc(left["dvpp_descs"][0]) == 0
    assert sim.leaks() == {}
