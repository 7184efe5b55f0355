#!/usr/bin/env python3
"""Generate the torchvision reference fixtures (ImageNet model families and .pth interop).

Run with the Debian PyTorch (torch 1.13, torchvision 0.14):

    /usr/bin/python3 scripts/gen_torchvision_fixtures.py [--out DIR]

Writes into test/fixtures (described in test/fixtures/tv_README.md):

    tv_resnet50.pth, tv_mobilenet_v2.pth   REAL torch.save(model.state_dict()) of torchvision's
                                           resnet50() / mobilenet_v2() (1000 classes). Every
                                           float parameter/buffer is a strided VIEW
                                           (torch.as_strided) of one small shared float32
                                           storage, every num_batches_tracked a view of one
                                           shared int64 storage, so torch.save stores two
                                           storages and the files stay small while the loader's
                                           offset/stride/shared-storage logic is exercised.
    tv_models.safetensors                  eval-mode logits of those two models (computed in
                                           float64 from the float32 weights) for a 2x3x64x64
                                           formula input, plus torchvision's state-dict keys,
                                           shapes, parameter counts and printed reprs.
    tv_dtypes.pth, tv_nested*.pth,         small files for the loader tests (dtypes, views,
    tv_legacy.pth, tv_bad_*.pth,           wrappers, refused and malformed files).
    tv_malicious*.pth

The malicious files are only WRITTEN here, never loaded.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import io
import json
import math
import os
import pickle
import sys
import zipfile
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torchvision

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stream of the model input: x[i] = fround(u(INPUT_STREAM, i)), layout (2, 3, 64, 64).
INPUT_STREAM = 5000
INPUT_SHAPE = (2, 3, 64, 64)
# Streams of the shared storages' segments start here (one stream per segment).
BASE_STREAM = 6000
# Marker file the malicious payloads would create if they were ever executed.
PWNED_MARKER = "/tmp/convnets-pth-pwned-marker"

_spec = importlib.util.spec_from_file_location("gen_fixtures", os.path.join(REPO_ROOT, "scripts", "gen_fixtures.py"))
gf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gf)  # type: ignore[union-attr]
u_stream, f32, write_safetensors = gf.u_stream, gf.f32, gf.write_safetensors

VARIANTS = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet34": lambda: torchvision.models.resnet34(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "resnet101": lambda: torchvision.models.resnet101(),
    "resnet152": lambda: torchvision.models.resnet152(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "mobilenet_v2_0.5": lambda: torchvision.models.mobilenet_v2(width_mult=0.5),
}
REPR_VARIANTS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v2_0.5"]


# --------------------------------------------------------------------------------------------
# Strided views of one shared storage
# --------------------------------------------------------------------------------------------

class SharedLayout:
    """Plans the shared float32 storage: one segment per value rule, views placed inside.

    Segments: for >= 2-d weights one per (kind, fan_in) with values (2u-1)*sqrt(g/fan_in)
    (g = 6 for convs, He-like, so activations keep their scale through ReLU layers; g = 3 for
    the Linear classifier); 1-d segments 'w' (BN weight: 1 + 0.25(2u-1)), 'b' (biases and
    running means: 0.1(2u-1)) and 'v' (running variances: 0.75 + 0.5u).
    """

    def __init__(self, sd: Dict[str, torch.Tensor]):
        self.entries = [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]
        self.segments: Dict[str, Tuple[int, int, float, str]] = {}  # name -> (start, length, scale, rule)
        need: Dict[str, int] = collections.OrderedDict()
        rules: Dict[str, Tuple[str, float]] = {}
        for name, shape, dtype in self.entries:
            if dtype == torch.int64:
                continue
            seg, rule, scale, length = self._segment_of(name, shape)
            need[seg] = max(need.get(seg, 0), length)
            rules[seg] = (rule, scale)
        start = 0
        for seg, length in need.items():
            length += 37  # room for varied offsets
            rule, scale = rules[seg]
            self.segments[seg] = (start, length, scale, rule)
            start += length
        self.size = start

    @staticmethod
    def _segment_of(name: str, shape: Tuple[int, ...]) -> Tuple[str, str, float, int]:
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            gain = 3.0 if len(shape) == 2 else 6.0
            kind = "lin" if len(shape) == 2 else "conv"
            return f"{kind}{fan_in}", "weight", math.sqrt(gain / fan_in), fan_in + shape[0] - 1
        c = shape[0]
        if name.endswith("running_var"):
            return "v", "var", 0.0, 2 * c
        if name.endswith("running_mean") or name.endswith("bias"):
            return "b", "small", 0.0, 2 * c
        return "w", "one", 0.0, 2 * c

    def base(self) -> torch.Tensor:
        out = np.zeros(self.size, dtype=np.float32)
        for i, (seg, (start, length, scale, rule)) in enumerate(self.segments.items()):
            uu = u_stream(BASE_STREAM + i, length)
            if rule == "weight":
                v = (2.0 * uu - 1.0) * scale
            elif rule == "var":
                v = 0.75 + 0.5 * uu
            elif rule == "small":
                v = 0.1 * (2.0 * uu - 1.0)
            else:
                v = 1.0 + 0.25 * (2.0 * uu - 1.0)
            out[start:start + length] = f32(v)
        return torch.from_numpy(out)

    def view(self, base: torch.Tensor, j: int, name: str, shape: Tuple[int, ...]) -> torch.Tensor:
        """The j-th entry as a strided view of `base` (varied offsets; permuted inner strides)."""
        seg, _, _, need = self._segment_of(name, shape)
        start, length, _, _ = self.segments[seg]
        slack = length - need
        if len(shape) >= 2:
            o = shape[0]
            fan_in = int(np.prod(shape[1:]))
            # dim 0: shift between output rows (overlapping rows); inner dims: a permutation of
            # the fan_in window, so the view is not contiguous: (i, y, x) -> i + (y*kw + x)*I.
            a = 1 if o == 1 else max(1, min(3, (length - fan_in) // max(1, o - 1)))
            used = fan_in + (o - 1) * a
            off = start + ((j * 7919) % max(1, length - used + 1))
            if len(shape) == 2:
                stride = (a, 1)
            else:
                ci, kh, kw = shape[1], shape[2], shape[3]
                stride = (a, 1, kw * ci, ci)
            assert off + used <= start + length
            return torch.as_strided(base, shape, stride, off)
        c = shape[0]
        s = 2 if j % 3 == 1 else 1
        used = (c - 1) * s + 1
        off = start + ((j * 104729) % max(1, length - used + 1))
        assert off + used <= start + length and slack >= 0
        return torch.as_strided(base, shape, (s,), off)


def share_storage(model: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Replace every parameter/buffer of `model` with a view of one of two shared storages."""
    sd = model.state_dict()
    layout = SharedLayout(sd)
    base = layout.base()
    counters = torch.arange(8, dtype=torch.int64)
    views: Dict[str, torch.Tensor] = {}
    for j, (name, shape, dtype) in enumerate(layout.entries):
        if dtype == torch.int64:
            views[name] = torch.as_strided(counters, shape, (), j % 8)
        else:
            views[name] = layout.view(base, j, name, shape)
    for mname, m in model.named_modules():
        prefix = mname + "." if mname else ""
        for pname, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[pname] = nn.Parameter(views[prefix + pname], requires_grad=p.requires_grad)
        for bname, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[bname] = views[prefix + bname]
    for name, t in model.state_dict().items():  # check: same storage, values in place
        assert t.data_ptr() == views[name].data_ptr() and t.stride() == views[name].stride(), name
    return base, counters


def formula_input() -> torch.Tensor:
    n = int(np.prod(INPUT_SHAPE))
    return torch.from_numpy(f32(u_stream(INPUT_STREAM, n)).reshape(INPUT_SHAPE))


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double()
    b = b.double()
    return float((a - b).norm() / b.norm())


def model_fixture(name: str, make, out_dir: str, tensors: Dict[str, object], meta: Dict[str, str]) -> None:
    torch.manual_seed(0)
    model = make().eval()
    share_storage(model)
    path = os.path.join(out_dir, f"tv_{name}.pth")
    torch.save(model.state_dict(), path)
    size = os.path.getsize(path)
    # Reference: the same float32 weights, computed in float64.
    m64 = make()
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    x = formula_input()
    with torch.no_grad():
        y64 = m64(x.double())
        y32 = model(x)
        # Sanity of the computation: the logits depend on the input, not just on fc's bias.
        head = m64.fc if hasattr(m64, "fc") else m64.classifier[1]
        bias_share = float(head.bias.double().norm() * math.sqrt(y64.shape[0]) / y64.norm())
        spread = rel_l2(y64[0], y64[1])
    tensors[f"{name}.logits"] = y64
    meta[f"{name}.pth_bytes"] = str(size)
    meta[f"{name}.f32_vs_f64"] = f"{rel_l2(y32, y64):.3e}"
    print(f"tv_{name}.pth: {size} bytes; logits |y| {float(y64.norm()):.4g}, "
          f"f32 vs f64 rel {rel_l2(y32, y64):.2e}, bias share {bias_share:.3f}, sample spread {spread:.3f}")


# --------------------------------------------------------------------------------------------
# Loader test files
# --------------------------------------------------------------------------------------------

class Pwn:
    """Pickles as a call to os.system (posix.system on Linux): never unpickle this."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED_MARKER}",))


class PwnEval:
    def __reduce__(self):
        import builtins
        return (builtins.eval, (f"__import__('os').system('touch {PWNED_MARKER}')",))


def dtype_file(path: str) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    base = torch.arange(10, dtype=torch.float32) * 0.5
    sd = collections.OrderedDict()
    sd["f32"] = torch.tensor([1.5, -2.25, 3.0], dtype=torch.float32)
    sd["f16"] = torch.tensor([0.5, -1.0, 65504.0, 2.0 ** -24], dtype=torch.float16)
    sd["bf16"] = torch.tensor([1.0, -3.5, 256.0, 0.0078125], dtype=torch.bfloat16)
    sd["f64"] = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)
    sd["i64"] = torch.tensor([0, -7, 2 ** 40, 123456789], dtype=torch.int64)
    sd["i32"] = torch.tensor([5, -6], dtype=torch.int32)
    sd["transposed"] = t.t()  # shape [3, 4], strides (1, 3): non-contiguous
    sd["offset_view"] = base[3:7]  # storage offset 3, shares storage with offset_step2
    sd["offset_step2"] = base[1::3]  # offset 1, stride 3 -> [0.5, 2.0, 3.5]
    sd["scalar"] = torch.tensor(42, dtype=torch.int64)
    sd["param"] = nn.Parameter(torch.tensor([[1.0, 2.0]]))  # pickled via _rebuild_parameter
    sd["empty"] = torch.zeros(0, 3)
    torch.save(sd, path)


def small_state_dict() -> "collections.OrderedDict[str, torch.Tensor]":
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.5, -0.5]))
        bn.running_mean.copy_(torch.tensor([0.25, 0.75]))
        bn.running_var.copy_(torch.tensor([1.5, 2.5]))
        bn.num_batches_tracked.fill_(3)
    return bn.state_dict()


def write_zip(path: str, entries: List[Tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> None:
    """A zip with fixed timestamps (so the output is reproducible)."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            z.writestr(info, data)


def loader_files(out_dir: str) -> Dict[str, int]:
    p = lambda n: os.path.join(out_dir, n)  # noqa: E731
    dtype_file(p("tv_dtypes.pth"))
    sd = small_state_dict()
    torch.save({"epoch": 7, "state_dict": sd, "best_acc": 0.875, "arch": "bn", "flags": [True, False, None],
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
                "big": 2 ** 70, "neg": -2 ** 40, "pair": (1, 2.5)}, p("tv_nested.pth"))
    torch.save({"model": sd, "epoch": 1}, p("tv_nested_model.pth"))
    # (the legacy format names storages by id(), so this one file differs from run to run)
    torch.save(sd, p("tv_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({"weight": torch.ones(2), "payload": Pwn()}, p("tv_malicious.pth"))
    torch.save({"payload": PwnEval()}, p("tv_malicious_eval.pth"))
    with open(p("tv_malicious_bare.pth"), "wb") as f:  # a bare pickle, protocol 4 (STACK_GLOBAL)
        pickle.dump({"payload": Pwn()}, f, protocol=4)
    torch.save({"not": "tensors", "n": 3}, p("tv_not_state_dict.pth"))
    # Malformed archives, derived from a valid one.
    good_path = p("tv_good_small.pth")
    torch.save(sd, good_path)
    with open(good_path, "rb") as f:
        good = f.read()
    os.remove(good_path)
    with open(p("tv_bad_truncated.pth"), "wb") as f:
        f.write(good[: len(good) // 2])
    with open(p("tv_bad_magic.pth"), "wb") as f:
        f.write(b"GIF89a this is not a checkpoint\n" + bytes(range(64)))
    z = zipfile.ZipFile(io.BytesIO(good))
    names = z.namelist()
    contents = [(n, z.read(n)) for n in names]
    write_zip(p("tv_bad_no_datapkl.pth"), [(n, d) for n, d in contents if not n.endswith("data.pkl")])
    # storage out of bounds: storage 0 (bn weight, 2 floats) cut to 1 float
    write_zip(p("tv_bad_storage_oob.pth"), [(n, d[:4] if n.endswith("/data/0") else d) for n, d in contents])
    # a different top folder name, compressed with deflate (torch never does; zip tools may)
    write_zip(p("tv_deflate.pth"), [("renamed_top/" + n.split("/", 1)[1], d) for n, d in contents], zipfile.ZIP_DEFLATED)
    return {n: os.path.getsize(p(n)) for n in sorted(os.listdir(out_dir)) if n.startswith("tv_") and n.endswith(".pth")}


# --------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "test", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    tensors: Dict[str, object] = {}
    meta: Dict[str, str] = {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "input": f"x[i] = fround(u({INPUT_STREAM}, i)), shape {list(INPUT_SHAPE)} (NCHW, flat index i)",
        "variants": json.dumps(list(VARIANTS)),
    }
    for name, make in VARIANTS.items():
        torch.manual_seed(0)
        m = make()
        sd = m.state_dict()
        meta[f"keys.{name}"] = json.dumps([[k, list(v.shape)] for k, v in sd.items()], separators=(",", ":"))
        meta[f"num_params.{name}"] = str(sum(p.numel() for p in m.parameters()))
        if name in REPR_VARIANTS:
            meta[f"repr.{name}"] = str(m)
        print(f"{name}: {meta[f'num_params.{name}']} parameters, {len(sd)} state-dict entries")
    model_fixture("resnet50", VARIANTS["resnet50"], args.out, tensors, meta)
    model_fixture("mobilenet_v2", VARIANTS["mobilenet_v2"], args.out, tensors, meta)
    x = formula_input()
    tensors["input.head"] = x.flatten()[:16]
    size = write_safetensors(os.path.join(args.out, "tv_models.safetensors"), tensors, meta)
    print(f"tv_models.safetensors: {size} bytes")
    for n, s in loader_files(args.out).items():
        print(f"{n}: {s} bytes")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out) if n.startswith("tv_"))
    print(f"total tv_* fixtures: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
