"""The documented pyACL bundle weight-update sequence (pyACL documentation), with acl.* calls only.

Runs on real pyACL when ``import acl`` works, else on the simulator
(``acl_bundle.sim.install()``).  Builds a small MLP bundle into a temp dir with the
simulator's builder, runs init -> infer -> update one weight -> infer, checks both
results against numpy and exits non-zero on any mismatch or ACL error.
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

DEVICE = 0
H2D, D2H = 1, 2  # ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST
ACL_FLOAT, ACL_FORMAT_ND = 0, 2


def check(ret: int, what: str) -> None:
    if ret != 0:
        raise SystemExit(f"{what} failed: {ret} {acl.get_recent_err_msg()}")


def numpy_forward(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(x @ w["fc0.weight"] + w["fc0.bias"], 0)
    return h @ w["fc1.weight"] + w["fc1.bias"]


def main() -> int:
    model, weights = models.mlp((8, 16, 4), seed=7)
    tmp = tempfile.TemporaryDirectory()
    om, _ = builder.save(builder.build_bundle(model), Path(tmp.name) / "mlp_bundle.om")

    check(acl.init(), "init")
    check(acl.rt.set_device(DEVICE), "set_device")
    bundle_id, ret = acl.mdl.bundle_load_from_file(str(om))
    check(ret, "bundle_load_from_file")
    n, ret = acl.mdl.bundle_get_model_num(bundle_id)
    check(ret, "bundle_get_model_num")
    ids = []
    for i in range(n):
        mid, ret = acl.mdl.bundle_get_model_id(bundle_id, i)
        check(ret, f"bundle_get_model_id({i})")
        ids.append(mid)
    infer_id, init_id, update_id = ids

    descs, datasets, buffers, ptrs, tensor_descs = {}, [], [], [], []

    def make_dataset(sizes: list[int]) -> tuple[int, list[int]]:
        ds = acl.mdl.create_dataset()
        datasets.append(ds)
        out = []
        for size in sizes:
            p, ret = acl.rt.malloc(size, 2)
            check(ret, "malloc")
            ptrs.append(p)
            db = acl.create_data_buffer(p, size)
            buffers.append(db)
            _, ret = acl.mdl.add_dataset_buffer(ds, db)
            check(ret, "add_dataset_buffer")
            out.append(p)
        return ds, out

    for mid in ids:
        d = acl.mdl.create_desc()
        check(acl.mdl.get_desc(d, mid), "get_desc")
        descs[mid] = d
    d_inf, d_upd = descs[infer_id], descs[update_id]
    n_in, n_out = acl.mdl.get_num_inputs(d_inf), acl.mdl.get_num_outputs(d_inf)
    inf_in, inf_in_p = make_dataset([acl.mdl.get_input_size_by_index(d_inf, i) for i in range(n_in)])
    inf_out, inf_out_p = make_dataset([acl.mdl.get_output_size_by_index(d_inf, i) for i in range(n_out)])
    init_in, _ = make_dataset([])
    init_out, _ = make_dataset([])
    n_upd = acl.mdl.get_num_inputs(d_upd)
    upd_in, upd_p = make_dataset([acl.mdl.get_input_size_by_index(d_upd, i) for i in range(n_upd)])
    upd_out, _ = make_dataset([])

    check(acl.mdl.execute(init_id, init_in, init_out), "execute(init)")

    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    out_bytes = bytes(acl.mdl.get_output_size_by_index(d_inf, 0))

    def infer() -> np.ndarray:
        check(acl.rt.memcpy(inf_in_p[0], x.nbytes, acl.util.numpy_to_ptr(x), x.nbytes, H2D), "memcpy H2D")
        check(acl.mdl.execute(infer_id, inf_in, inf_out), "execute(infer)")
        nbytes = len(out_bytes)
        check(acl.rt.memcpy(acl.util.bytes_to_ptr(out_bytes), nbytes, inf_out_p[0], nbytes, D2H), "memcpy D2H")
        return np.frombuffer(out_bytes, np.float32).reshape(1, 4).copy()

    failures = 0
    y0 = infer()
    if not np.allclose(y0, numpy_forward(x, weights), rtol=1e-5, atol=1e-5):
        print("MISMATCH before update", y0, numpy_forward(x, weights), file=sys.stderr)
        failures += 1

    # update fc1.weight only: empty descs for unchanged weights, real dims for the changed one
    new_w = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    for i in range(n_upd):
        name = acl.mdl.get_input_name_by_index(d_upd, i)
        if name == "fc1.weight_var_data":
            nbytes = new_w.nbytes
            check(acl.rt.memcpy(upd_p[i], nbytes, acl.util.numpy_to_ptr(new_w), nbytes, H2D), "memcpy weight")
            td = acl.create_tensor_desc(ACL_FLOAT, list(new_w.shape), ACL_FORMAT_ND)
        else:
            td = acl.create_tensor_desc(ACL_FLOAT, [0], ACL_FORMAT_ND)
        tensor_descs.append(td)
        _, ret = acl.mdl.set_dataset_tensor_desc(upd_in, td, i)
        check(ret, "set_dataset_tensor_desc")
    check(acl.mdl.execute(update_id, upd_in, upd_out), "execute(update)")

    y1 = infer()
    expect = numpy_forward(x, {**weights, "fc1.weight": new_w})
    if not np.allclose(y1, expect, rtol=1e-5, atol=1e-5):
        print("MISMATCH after update", y1, expect, file=sys.stderr)
        failures += 1

    # teardown
    for td in tensor_descs:
        acl.destroy_tensor_desc(td)
    for ds in datasets:
        check(acl.mdl.destroy_dataset(ds), "destroy_dataset")
    for db in buffers:
        check(acl.destroy_data_buffer(db), "destroy_data_buffer")
    for p in ptrs:
        check(acl.rt.free(p), "free")
    for d in descs.values():
        check(acl.mdl.destroy_desc(d), "destroy_desc")
    check(acl.mdl.bundle_unload(bundle_id), "bundle_unload")
    check(acl.rt.reset_device(DEVICE), "reset_device")
    check(acl.finalize(), "finalize")
    tmp.cleanup()
    if "acl_bundle.sim" in sys.modules:
        from acl_bundle import sim as _sim

        leaks = dict(_sim.leaks())
        if leaks:
            print("LEAKS", leaks, file=sys.stderr)
            failures += 1
    print("OK" if not failures else f"{failures} FAILURE(S)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
