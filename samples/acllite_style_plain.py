"""A plain model run the way acllite does it (Ascend/samples python/common/acllite), acl.* only.

Runs on real pyACL when ``import acl`` works, else on the simulator.  Builds a plain
MLP model file with the simulator's builder, runs it once, compares with numpy and
exits non-zero on mismatch.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import acl  # real pyACL
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from acl_bundle import sim

    sim.install()
    import acl

from acl_bundle.sim import builder, models

ACL_MEM_MALLOC_NORMAL_ONLY = 2
ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE = 1, 2, 3
ACL_HOST = 1


def check(ret: int, what: str) -> None:
    if ret != 0:
        raise SystemExit(f"{what} failed: {ret} {acl.get_recent_err_msg()}")


def main() -> int:
    model, weights = models.mlp((8, 16, 4), seed=11)
    tmp = tempfile.TemporaryDirectory()
    om, _ = builder.save(builder.build_plain(model), Path(tmp.name) / "mlp.om")

    # AclLiteResource.init
    acl.init()
    check(acl.rt.set_device(0), "set_device")
    context, ret = acl.rt.create_context(0)
    check(ret, "create_context")
    stream, ret = acl.rt.create_stream()
    check(ret, "create_stream")
    run_mode, ret = acl.rt.get_run_mode()
    check(ret, "get_run_mode")

    # AclLiteModel._init_resource
    model_id, ret = acl.mdl.load_from_file(str(om))
    check(ret, "load_from_file")
    desc = acl.mdl.create_desc()
    check(acl.mdl.get_desc(desc, model_id), "get_desc")

    def gen_dataset(kind: str) -> tuple[int, list[tuple[int, int]]]:
        ds = acl.mdl.create_dataset()
        n = acl.mdl.get_num_inputs(desc) if kind == "in" else acl.mdl.get_num_outputs(desc)
        bufs = []
        for i in range(n):
            size_of = acl.mdl.get_input_size_by_index if kind == "in" else acl.mdl.get_output_size_by_index
            size = size_of(desc, i)
            ptr, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_NORMAL_ONLY)
            check(ret, "malloc")
            db = acl.create_data_buffer(ptr, size)
            _, ret = acl.mdl.add_dataset_buffer(ds, db)
            check(ret, "add_dataset_buffer")
            bufs.append((ptr, size))
        return ds, bufs

    in_ds, in_bufs = gen_dataset("in")
    out_ds, out_bufs = gen_dataset("out")

    # AclLiteModel.execute
    _, ret = acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")
    if ret == 0:
        raise SystemExit("static model reported a dynamic batch input")
    x = np.random.default_rng(5).standard_normal((1, 8)).astype(np.float32)
    kind = ACL_MEMCPY_HOST_TO_DEVICE if run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
    ptr = acl.util.numpy_to_ptr(x) if "bytes_to_ptr" not in dir(acl.util) else acl.util.bytes_to_ptr(x.tobytes())
    check(acl.rt.memcpy(in_bufs[0][0], in_bufs[0][1], ptr, x.nbytes, kind), "memcpy H2D")
    check(acl.mdl.execute(model_id, in_ds, out_ds), "execute")

    # AclLiteModel._output_dataset_to_numpy
    results = []
    for i in range(acl.mdl.get_dataset_num_buffers(out_ds)):
        db = acl.mdl.get_dataset_buffer(out_ds, i)
        dptr = acl.get_data_buffer_addr(db)
        size = acl.get_data_buffer_size(db)
        dims, ret = acl.mdl.get_output_dims(desc, i)
        check(ret, "get_output_dims")
        out_bytes = bytes(size)
        d2h = ACL_MEMCPY_DEVICE_TO_HOST if run_mode == ACL_HOST else ACL_MEMCPY_DEVICE_TO_DEVICE
        check(acl.rt.memcpy(acl.util.bytes_to_ptr(out_bytes), size, dptr, size, d2h), "memcpy D2H")
        results.append(np.frombuffer(out_bytes, np.float32).reshape(dims["dims"]))

    expect = models.mlp_reference(x, weights)
    ok = np.allclose(results[0], expect, rtol=1e-5, atol=1e-5)
    if not ok:
        print("MISMATCH", results[0], expect, file=sys.stderr)

    # AclLiteModel.__del__ / AclLiteResource.__del__
    for ds, bufs in ((in_ds, in_bufs), (out_ds, out_bufs)):
        for i in range(acl.mdl.get_dataset_num_buffers(ds)):
            check(acl.destroy_data_buffer(acl.mdl.get_dataset_buffer(ds, i)), "destroy_data_buffer")
        check(acl.mdl.destroy_dataset(ds), "destroy_dataset")
        for p, _ in bufs:
            check(acl.rt.free(p), "free")
    check(acl.mdl.unload(model_id), "unload")
    check(acl.mdl.destroy_desc(desc), "destroy_desc")
    check(acl.rt.destroy_stream(stream), "destroy_stream")
    check(acl.rt.destroy_context(context), "destroy_context")
    check(acl.rt.reset_device(0), "reset_device")
    check(acl.finalize(), "finalize")
    tmp.cleanup()
    if "acl_bundle.sim" in sys.modules:
        from acl_bundle import sim as _sim

        if _sim.leaks():
            print("LEAKS", _sim.leaks(), file=sys.stderr)
            ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
