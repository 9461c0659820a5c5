"""Print how far the simulator's JPEGD / VPC output is from Pillow's decode + resize, on the
pictures of tests/sim/test_sim_media.py (the figures docs/simulator.md quotes).

    PYTHONPATH=. python scripts/media_tolerance.py
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "sim"), str(ROOT / "tests")]

import test_sim_media as T  # noqa: E402

from acl_bundle import sim  # noqa: E402

acl = sim.acl


def report(what: str, y, u, v, ref) -> None:
    chroma = [np.abs(g - T._sub2(ref[:, :, k])) for g, k in ((u, 1), (v, 2))]
    print(f"{what}: luma max {int(np.abs(y - ref[:, :, 0]).max())}, "
          f"chroma mean {max(float(c.mean()) for c in chroma):.2f} max {max(int(c.max()) for c in chroma)}")


def main() -> None:
    assert acl.init() == 0 and acl.rt.set_device(0) == 0
    T._assert_like = lambda y, u, v, ref_rgb: report("  resize/crop/paste", y, u, v, T._ref_ycbcr(ref_rgb))
    d = T.Dvpp()
    jpeg = T._jpeg(301, 203)
    _, out, size, w, h, ws, hs = T.decode(d, jpeg)
    report("decode 301x203", *T.planes(d.download(out, size), w, h, ws, hs),
           T._ref_ycbcr(T.Image.open(io.BytesIO(jpeg)))[:h, :w])
    d.close()
    for name in ("test_vpc_resize_matches_pillow", "test_vpc_crop_and_crop_and_paste",
                 "test_batch_crop_and_batch_crop_and_paste"):
        print(name)
        d = T.Dvpp()
        getattr(T, name)(d)
        d.close()
    acl.rt.reset_device(0)
    acl.finalize()


if __name__ == "__main__":
    main()
