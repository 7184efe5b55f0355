#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures the TypeScript tests compare against.

Run from anywhere with the Debian PyTorch:

    /usr/bin/python3 scripts/gen_fixtures.py [--ref DIR] [--out DIR] [--batch B]
    /usr/bin/python3 scripts/gen_fixtures.py --measure      # float32-vs-float64 table for B=8,16

Writes (see test/fixtures/FIXTURES.md for the exact names, layouts and formulas):

    test/fixtures/model_mobilenetv1.safetensors
    test/fixtures/model_mobilenetv2.safetensors
    test/fixtures/model_resnet18.safetensors
    test/fixtures/ops.safetensors
    test/fixtures/optim.safetensors
    test/fixtures/formula.safetensors

The reference model classes are imported from seed_models.py in --ref (default
../shared/reference relative to the repository root). Every reference value is
computed in float64 from float32-representable inputs/weights and stored as F32.
The safetensors format is written by hand (the python package is not required).

The deterministic value formula is mirrored bit-for-bit by test/helpers/formula.ts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import struct
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Default batch size of the model fixtures (chosen from the --measure table, see FIXTURES.md).
DEFAULT_BATCH = 8
SAMPLE_COUNT = 256
FULL_LIMIT = 4096

STREAM_INPUT_TRAIN = 1000
STREAM_INPUT_CALIB = 1001
STREAM_INPUT_EVAL = 1002

FORMULA_DESCRIPTION = (
    "u(k,i)=h/2^32 with h=((i+1)*0x9E3779B1)^((k+1)*0x85EBCA77) (mod 2^32), "
    "h^=h>>16; h*=0x7FEB352D; h^=h>>15; h*=0x846CA68B; h^=h>>16 (u32). "
    "state_dict entries in order, num_batches_tracked skipped (=0, no k); k-th entry element i: "
    "ndim>=2: (2u-1)*sqrt(3/fan_in), fan_in=shape[1]*prod(shape[2:]); running_mean: 0.1*(2u-1); "
    "running_var: 0.75+0.5*u; 1-d bias: 0.1*(2u-1); 1-d weight: 1+0.25*(2u-1); "
    "computed in float64 then rounded to float32. Inputs: fround(u) with k=1000 train, 1001 calib, "
    "1002 eval, layout (B,3,32,32) flat index i. Targets y[n]=(3n+1)%10."
)

M32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# Deterministic formula
# --------------------------------------------------------------------------------------------

def hash_u32_scalar(k: int, i: int) -> int:
    """Pure-Python reference of the hash (used to cross-check the vectorised version)."""
    m = 0xFFFFFFFF
    h = (((i + 1) * 0x9E3779B1) & m) ^ (((k + 1) * 0x85EBCA77) & m)
    h ^= h >> 16
    h = (h * 0x7FEB352D) & m
    h ^= h >> 15
    h = (h * 0x846CA68B) & m
    h ^= h >> 16
    return h


def hash_u32(k: int, n: int, start: int = 0) -> np.ndarray:
    """h(k, i) for i = start .. start+n-1, as uint64 arrays holding u32 values."""
    i = np.arange(start, start + n, dtype=np.uint64)
    h = ((i + np.uint64(1)) * np.uint64(0x9E3779B1)) & M32
    h ^= np.uint64(((k + 1) * 0x85EBCA77) & 0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & M32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & M32
    h ^= h >> np.uint64(16)
    return h


def u_stream(k: int, n: int) -> np.ndarray:
    """u(k, i) in [0,1) as float64 (exact: h / 2^32)."""
    return hash_u32(k, n).astype(np.float64) / 4294967296.0


def f32(a: np.ndarray) -> np.ndarray:
    """Round float64 -> float32 (round to nearest even, like Math.fround)."""
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def ranged(k: int, shape: Sequence[int], lo: float, hi: float) -> np.ndarray:
    """fround(lo + (hi - lo) * u(k, i)), laid out row-major in `shape`. float32 array."""
    n = int(np.prod(shape)) if len(shape) else 1
    v = float(lo) + (float(hi) - float(lo)) * u_stream(k, n)
    return f32(v).reshape(tuple(shape))


def formula_entry(name: str, shape: Sequence[int], k: int) -> np.ndarray:
    """float32 values of the k-th (non num_batches_tracked) state_dict entry."""
    n = int(np.prod(shape)) if len(shape) else 1
    uu = u_stream(k, n)
    if len(shape) >= 2:
        fan_in = int(shape[1]) * int(np.prod(shape[2:])) if len(shape) > 2 else int(shape[1])
        v = (2.0 * uu - 1.0) * math.sqrt(3.0 / fan_in)
    elif name.endswith("running_mean"):
        v = 0.1 * (2.0 * uu - 1.0)
    elif name.endswith("running_var"):
        v = 0.75 + 0.5 * uu
    elif name.endswith("bias"):
        v = 0.1 * (2.0 * uu - 1.0)
    elif name.endswith("weight"):
        v = 1.0 + 0.25 * (2.0 * uu - 1.0)
    else:
        raise ValueError(f"no formula rule for state_dict entry {name!r} {list(shape)}")
    return f32(v).reshape(tuple(shape))


def formula_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    k = 0
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(t)
            continue
        out[name] = torch.from_numpy(formula_entry(name, list(t.shape), k).copy())
        k += 1
    return out


def formula_input(k: int, batch: int) -> torch.Tensor:
    return torch.from_numpy(f32(u_stream(k, batch * 3 * 32 * 32)).reshape(batch, 3, 32, 32).copy())


def formula_targets(batch: int) -> torch.Tensor:
    return torch.tensor([(3 * n + 1) % 10 for n in range(batch)], dtype=torch.long)


def sample_indices(numel: int) -> List[int]:
    return [j * numel // SAMPLE_COUNT for j in range(SAMPLE_COUNT)]


# --------------------------------------------------------------------------------------------
# safetensors (hand-written)
# --------------------------------------------------------------------------------------------

def to_np32(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().to(torch.float64).numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=np.float64).astype("<f4"))


def write_safetensors(path: str, tensors: Dict[str, object], metadata: Dict[str, str]) -> int:
    for key, val in metadata.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise TypeError(f"metadata {key!r} must map str -> str")
    header: Dict[str, object] = {"__metadata__": metadata}
    blobs: List[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = to_np32(tensors[name])
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"non-finite value in {name}")
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": [int(s) for s in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return os.path.getsize(path)


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32"
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + e], dtype="<f4").reshape(info["shape"])
    return out, meta


# --------------------------------------------------------------------------------------------
# Model fixtures
# --------------------------------------------------------------------------------------------

def load_reference(ref_dir: str):
    path = os.path.join(ref_dir, "seed_models.py")
    spec = importlib.util.spec_from_file_location("seed_models", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_model(cls, sd: Dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    m = cls()
    m.load_state_dict(sd)  # float32 formula values
    return m.to(dtype)     # exact promotion to float64 when dtype is float64


def bn_modules(model: nn.Module) -> List[Tuple[str, nn.BatchNorm2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


class record_activation_inputs:
    """Temporarily wrap F.relu / F.relu6 / F.hardtanh (nn.ReLU6) to record their inputs
    (only while grad is enabled, i.e. the train forward). Values are unchanged."""

    NAMES = ("relu", "relu6", "hardtanh")

    def __init__(self):
        self.records: List[Tuple[str, torch.Tensor]] = []
        self.orig = {}

    def __enter__(self):
        for n in self.NAMES:
            orig = getattr(F, n)
            self.orig[n] = orig

            def wrapped(x, *a, _orig=orig, _n=n, **kw):
                if torch.is_grad_enabled():
                    self.records.append((_n, x.detach().clone()))
                return _orig(x, *a, **kw)
            setattr(F, n, wrapped)
        return self

    def __exit__(self, *exc):
        for n, o in self.orig.items():
            setattr(F, n, o)
        return False


def kink_stats(rec64, rec32=None) -> Dict[str, object]:
    """Distance of the float64 ReLU/ReLU6 inputs to their kinks (0, and 6 for ReLU6), and the number
    of elements on the other side of a kink in the float32 run."""
    total, flips, mind = 0, 0, math.inf
    near = {"1e-6": 0, "1e-5": 0, "1e-4": 0}
    for j, (n, x64) in enumerate(rec64):
        kinks = [0.0] if n == "relu" else [0.0, 6.0]
        total += x64.numel()
        for kk in kinks:
            d = x64 - kk
            ad = d.abs()
            mind = min(mind, ad.min().item())
            for key in near:
                near[key] += int((ad < float(key)).sum())
            if rec32 is not None:
                flips += int(((d > 0) != ((rec32[j][1].to(torch.float64) - kk) > 0)).sum())
    out = {"elements": total, "min_dist": mind, "near": near}
    if rec32 is not None:
        out["flips"] = flips
    return out


def run_model(cls, sd, batch: int, dtype: torch.dtype, mkldnn: bool = False) -> Dict[str, object]:
    """Everything the fixture needs, computed at `dtype`. Returns torch tensors (dtype).
    mkldnn=False uses PyTorch's native CPU kernels (oneDNN disabled)."""
    with torch.backends.mkldnn.flags(enabled=mkldnn), record_activation_inputs() as rec:
        r = _run_model(cls, sd, batch, dtype)
    r["acts"] = rec.records
    return r


def _run_model(cls, sd, batch: int, dtype: torch.dtype) -> Dict[str, object]:
    x_train = formula_input(STREAM_INPUT_TRAIN, batch).to(dtype)
    x_calib = formula_input(STREAM_INPUT_CALIB, batch).to(dtype)
    x_eval = formula_input(STREAM_INPUT_EVAL, batch).to(dtype)
    y = formula_targets(batch)

    # 1. train step
    m = build_model(cls, sd, dtype)
    m.train()
    logits = m(x_train)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    params = list(m.named_parameters())
    grads = {n: p.grad.detach().clone() for n, p in params}
    bn_stats = {n: (b.running_mean.detach().clone(), b.running_var.detach().clone())
                for n, b in bn_modules(m)}

    # 2. optimiser steps from the formula weights with those gradients
    before = {n: p.detach().clone() for n, p in params}
    adam = torch.optim.Adam([p for _, p in params], lr=1e-3)
    adam.step()
    adam_delta = {n: p.detach() - before[n] for n, p in params}
    with torch.no_grad():
        for n, p in params:
            p.copy_(before[n])
            p.grad = grads[n].clone()
    sgd = torch.optim.SGD([p for _, p in params], lr=0.1, momentum=0.9, weight_decay=5e-4)
    sgd.step()
    sgd_delta = {n: p.detach() - before[n] for n, p in params}

    # 3. eval with calibrated statistics
    m2 = build_model(cls, sd, dtype)
    for _, b in bn_modules(m2):
        b.momentum = 1.0
    m2.train()
    with torch.no_grad():
        m2(x_calib)
    m2.eval()
    with torch.no_grad():
        eval_logits = m2(x_eval)
    calib = {n: (b.running_mean.detach().clone(), b.running_var.detach().clone())
             for n, b in bn_modules(m2)}

    return {
        "model": m, "logits": logits.detach(), "loss": loss.detach(), "grads": grads,
        "bn": bn_stats, "adam": adam_delta, "sgd": sgd_delta, "eval_logits": eval_logits,
        "calib": calib, "params": [n for n, _ in params],
    }


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (b is the reference). nan if ||b|| == 0 and a == b."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    num = torch.linalg.norm((a - b).flatten()).item()
    den = torch.linalg.norm(b.flatten()).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def near_zero_grads(r64, threshold: float = 1e-6) -> Dict[str, float]:
    """Parameters whose float64 gradient RMS is < threshold * median gradient RMS."""
    rms = {n: (torch.linalg.norm(g.flatten()).item() / math.sqrt(g.numel()))
           for n, g in r64["grads"].items()}
    med = float(np.median(list(rms.values())))
    return {n: v for n, v in rms.items() if v < threshold * med}


def compare_f32(r64, r32) -> Dict[str, object]:
    nz = near_zero_grads(r64)
    grad_rel = {n: rel_l2(r32["grads"][n], r64["grads"][n]) for n in r64["params"]}
    considered = {n: v for n, v in grad_rel.items() if n not in nz}
    vals = np.array(list(considered.values()))
    worst = sorted(considered.items(), key=lambda kv: -kv[1])[:5]
    bn_rel = max(max(rel_l2(r32["bn"][n][0], r64["bn"][n][0]), rel_l2(r32["bn"][n][1], r64["bn"][n][1]))
                 for n in r64["bn"])
    calib_rel = max(rel_l2(r32["calib"][n][1], r64["calib"][n][1]) for n in r64["calib"])
    adam_rel = {n: rel_l2(r32["adam"][n], r64["adam"][n]) for n in r64["params"] if n not in nz}
    sgd_rel = {n: rel_l2(r32["sgd"][n], r64["sgd"][n]) for n in r64["params"]}
    # Adam's first step is ~ -lr*sign(g): count elements whose f32 step differs from the f64 one by > lr/10
    flip_frac = {n: float(((r32["adam"][n].double() - r64["adam"][n]).abs() > 1e-4).double().mean())
                 for n in r64["params"] if n not in nz}
    nz_f32 = {n: torch.linalg.norm(r32["grads"][n].double().flatten()).item() / math.sqrt(r32["grads"][n].numel())
              for n in nz}
    return {
        "logits_rel": rel_l2(r32["logits"], r64["logits"]),
        "loss_abs": abs(r32["loss"].item() - r64["loss"].item()),
        "loss": r64["loss"].item(),
        "eval_logits_rel": rel_l2(r32["eval_logits"], r64["eval_logits"]),
        "grad_rel_median": float(np.median(vals)),
        "grad_rel_max": float(vals.max()),
        "grad_rel_worst": [[n, v] for n, v in worst],
        "grad_rel": grad_rel,
        "near_zero": nz,
        "bn_running_rel_max": bn_rel,
        "calib_running_var_rel_max": calib_rel,
        "adam_rel_max": max(adam_rel.values()),
        "adam_rel_median": float(np.median(list(adam_rel.values()))),
        "sgd_rel_max": max(sgd_rel.values()),
        "adam_step_mismatch_frac_max": max(flip_frac.values()),
        "adam_step_mismatch_frac_median": float(np.median(list(flip_frac.values()))),
        "near_zero_f32_rms": nz_f32,
    }


def put_large(out: Dict[str, object], prefix: str, t: torch.Tensor) -> None:
    flat = t.detach().to(torch.float64).flatten()
    if flat.numel() <= FULL_LIMIT:
        out[prefix] = t.detach()
    else:
        out[prefix + ".norm"] = torch.linalg.norm(flat).reshape(1)
        out[prefix + ".sample"] = flat[torch.tensor(sample_indices(flat.numel()))]


def make_model_fixture(cls, batch: int) -> Tuple[Dict[str, object], Dict[str, str], Dict[str, object]]:
    torch.manual_seed(0)
    proto = cls()
    sd = formula_state_dict(proto)
    r64 = run_model(cls, sd, batch, torch.float64)
    r32 = run_model(cls, sd, batch, torch.float32, mkldnn=False)
    cmp = compare_f32(r64, r32)
    cmp["kinks"] = kink_stats(r64["acts"], r32["acts"])
    r32d = run_model(cls, sd, batch, torch.float32, mkldnn=True)
    cmp_d = compare_f32(r64, r32d)
    cmp["onednn"] = {k: v for k, v in cmp_d.items() if k not in ("grad_rel", "near_zero")}
    cmp["onednn"]["flips"] = kink_stats(r64["acts"], r32d["acts"])["flips"]

    t: Dict[str, object] = {}
    t["train.logits"] = r64["logits"]
    t["train.loss"] = r64["loss"].reshape(1)
    for n in r64["params"]:
        put_large(t, f"grad.{n}", r64["grads"][n])
        put_large(t, f"adam.{n}", r64["adam"][n])
        put_large(t, f"sgd.{n}", r64["sgd"][n])
    for n, (rm, rv) in r64["bn"].items():
        t[f"bn.{n}.running_mean"] = rm
        t[f"bn.{n}.running_var"] = rv
    t["eval.logits"] = r64["eval_logits"]
    for n, (rm, rv) in r64["calib"].items():
        t[f"calib.{n}.running_mean"] = rm
        t[f"calib.{n}.running_var"] = rv
    t["input.train.sample"] = formula_input(STREAM_INPUT_TRAIN, batch).flatten()[
        torch.tensor(sample_indices(batch * 3 * 32 * 32))]

    keys = [[n, list(v.shape)] for n, v in proto.state_dict().items()]
    num_params = sum(p.numel() for p in proto.parameters())
    meta = {
        "repr": str(proto),
        "keys": json.dumps(keys),
        "num_params": str(num_params),
        "batch": str(batch),
        "formula": FORMULA_DESCRIPTION,
        "targets": json.dumps([int(v) for v in formula_targets(batch)]),
        "params": json.dumps(r64["params"]),
        "bn_modules": json.dumps(list(r64["bn"].keys())),
        "full_limit": str(FULL_LIMIT),
        "sample": "flat indices floor(j*numel/256), j=0..255, when numel > full_limit",
        "optim": json.dumps({"adam": {"lr": 1e-3}, "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}}),
        "near_zero_grads": json.dumps(cmp["near_zero"]),
        "f32_vs_f64": json.dumps({k: v for k, v in cmp.items() if k not in ("grad_rel", "near_zero")}),
        "grad_rel_f32": json.dumps({n: float(f"{v:.3e}") for n, v in cmp["grad_rel"].items()}),
        "torch_version": torch.__version__,
    }
    return t, meta, cmp


# --------------------------------------------------------------------------------------------
# Op fixtures
# --------------------------------------------------------------------------------------------

class OpCase:
    def __init__(self, name: str, base: int):
        self.name = name
        self.base = base
        self.next = 0
        self.tensors: Dict[str, object] = {}
        self.meta: Dict[str, object] = {"streams": {}}

    def inp(self, tname: str, shape: Sequence[int], lo: float, hi: float, grad: bool = True) -> torch.Tensor:
        k = self.base + self.next
        self.next += 1
        self.meta["streams"][tname] = {"k": k, "lo": lo, "hi": hi, "shape": list(shape)}
        t = torch.from_numpy(ranged(k, shape, lo, hi).astype(np.float64))
        self.tensors[tname] = t
        return t.requires_grad_(grad)

    def put(self, tname: str, t) -> None:
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if t.dim() == 0:
                t = t.reshape(1)
        self.tensors[tname] = t


def op_cases() -> List[OpCase]:
    cases: List[OpCase] = []

    def new(name: str) -> OpCase:
        c = OpCase(name, 2000 + 16 * len(cases))
        cases.append(c)
        return c

    def backward_with_gy(c: OpCase, y: torch.Tensor, ny: str = "y") -> None:
        gy = c.inp("gy", list(y.shape), -1.0, 1.0, grad=False)
        (y * gy).sum().backward()
        c.put(ny, y)

    # ---- conv2d ---------------------------------------------------------------------------
    def conv(name, n, cin, cout, hw, k, s, p, groups, bias):
        c = new(name)
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (s, s) if isinstance(s, int) else s
        ph, pw = (p, p) if isinstance(p, int) else p
        h, w = hw
        c.meta.update({"op": "conv2d", "N": n, "C": cin, "O": cout, "H": h, "W": w,
                       "kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw],
                       "groups": groups, "bias": bias, "dilation": [1, 1]})
        x = c.inp("x", [n, cin, h, w], -2.0, 2.0)
        wt = c.inp("w", [cout, cin // groups, kh, kw], -1.0, 1.0)
        b = c.inp("b", [cout], -0.5, 0.5) if bias else None
        y = F.conv2d(x, wt, b, stride=(sh, sw), padding=(ph, pw), groups=groups)
        backward_with_gy(c, y)
        c.put("gx", x.grad)
        c.put("gw", wt.grad)
        if b is not None:
            c.put("gb", b.grad)

    conv("conv_basic", 2, 3, 4, (7, 6), 3, 1, 1, 1, True)
    conv("conv_stride2", 2, 4, 8, (8, 8), 3, 2, 1, 1, False)
    conv("conv_depthwise", 2, 6, 6, (9, 9), 3, 2, 1, 6, False)
    conv("conv_depthwise_s1", 2, 5, 5, (6, 7), 3, 1, 1, 5, False)
    conv("conv_grouped", 2, 4, 6, (6, 5), 3, 1, 0, 2, False)
    conv("conv_1x1", 2, 8, 5, (4, 5), 1, 1, 0, 1, True)
    conv("conv_rect", 2, 3, 4, (7, 5), (3, 2), (2, 1), (1, 0), 1, True)

    # ---- batch norm -------------------------------------------------------------------------
    def bn(name, training):
        c = new(name)
        n, ch, h, w = 3, 4, 5, 5
        c.meta.update({"op": "batch_norm", "N": n, "C": ch, "H": h, "W": w, "training": training,
                       "momentum": 0.1, "eps": 1e-5, "running_var_update": "unbiased (n/(n-1))"})
        x = c.inp("x", [n, ch, h, w], -2.0, 2.0)
        weight = c.inp("weight", [ch], 0.5, 1.5)
        bias = c.inp("bias", [ch], -0.5, 0.5)
        rm = c.inp("running_mean", [ch], -0.5, 0.5, grad=False)
        rv = c.inp("running_var", [ch], 0.5, 1.5, grad=False)
        rm2, rv2 = rm.clone(), rv.clone()
        y = F.batch_norm(x, rm2, rv2, weight, bias, training=training, momentum=0.1, eps=1e-5)
        backward_with_gy(c, y)
        c.put("gx", x.grad)
        c.put("gweight", weight.grad)
        c.put("gbias", bias.grad)
        if training:
            c.put("running_mean_after", rm2)
            c.put("running_var_after", rv2)

    bn("bn_train", True)
    bn("bn_eval", False)

    # ---- relu / relu6 -----------------------------------------------------------------------
    def act(name, fn, op):
        c = new(name)
        shape = [2, 3, 4, 5]
        c.meta.update({"op": op, "shape": shape,
                       "x": "first 5 flat values are exactly -1,0,3,6,7; the rest fround(-2+10u)",
                       "grad_at_kinks": "0 at x==0 (relu, relu6) and at x==6 (relu6)"})
        x = c.inp("x", shape, -2.0, 8.0, grad=False)
        with torch.no_grad():
            x.view(-1)[:5] = torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0], dtype=torch.float64)
        x.requires_grad_(True)
        c.put("x", x)
        y = fn(x)
        backward_with_gy(c, y)
        c.put("gx", x.grad)

    act("relu", F.relu, "relu")
    act("relu6", F.relu6, "relu6 (hardtanh 0..6)")

    # ---- add / mul --------------------------------------------------------------------------
    for name, fn in (("add", torch.add), ("mul", torch.mul)):
        c = new(name)
        shape = [2, 3, 4, 5]
        c.meta.update({"op": name, "shape": shape})
        a = c.inp("a", shape, -2.0, 2.0)
        b = c.inp("b", shape, -2.0, 2.0)
        y = fn(a, b)
        backward_with_gy(c, y)
        c.put("ga", a.grad)
        c.put("gb", b.grad)

    # ---- max pool ---------------------------------------------------------------------------
    def maxpool(name, n, ch, h, w, k, s, p):
        c = new(name)
        c.meta.update({"op": "max_pool2d", "N": n, "C": ch, "H": h, "W": w, "kernel": k,
                       "stride": s, "padding": p, "padding_value": "-inf"})
        x = c.inp("x", [n, ch, h, w], -2.0, 2.0)
        vals = x.detach().flatten()
        assert vals.unique().numel() == vals.numel(), f"{name}: ties in x"
        y = F.max_pool2d(x, k, s, p)
        backward_with_gy(c, y)
        c.put("gx", x.grad)

    maxpool("maxpool_k3s2p1", 2, 3, 7, 7, 3, 2, 1)
    maxpool("maxpool_k2s2", 2, 3, 8, 6, 2, 2, 0)

    # ---- adaptive avg pool ------------------------------------------------------------------
    def adaptive(name, n, ch, h, w, out):
        c = new(name)
        c.meta.update({"op": "adaptive_avg_pool2d", "N": n, "C": ch, "H": h, "W": w, "output": [out, out],
                       "windows": "start=floor(i*H/out), end=ceil((i+1)*H/out)"})
        x = c.inp("x", [n, ch, h, w], -2.0, 2.0)
        y = F.adaptive_avg_pool2d(x, out)
        backward_with_gy(c, y)
        c.put("gx", x.grad)

    adaptive("adaptive_avg_1", 2, 3, 5, 5, 1)
    adaptive("adaptive_avg_3", 2, 3, 7, 5, 3)

    # ---- linear -----------------------------------------------------------------------------
    c = new("linear")
    c.meta.update({"op": "linear", "N": 5, "in": 7, "out": 3, "bias": True, "w_layout": "[out, in]"})
    x = c.inp("x", [5, 7], -2.0, 2.0)
    w = c.inp("w", [3, 7], -1.0, 1.0)
    b = c.inp("b", [3], -0.5, 0.5)
    y = F.linear(x, w, b)
    backward_with_gy(c, y)
    c.put("gx", x.grad)
    c.put("gw", w.grad)
    c.put("gb", b.grad)

    # ---- log_softmax ------------------------------------------------------------------------
    c = new("log_softmax")
    c.meta.update({"op": "log_softmax", "N": 4, "classes": 6, "dim": 1})
    x = c.inp("x", [4, 6], -4.0, 4.0)
    y = F.log_softmax(x, dim=1)
    backward_with_gy(c, y)
    c.put("gx", x.grad)

    # ---- cross entropy ----------------------------------------------------------------------
    for name, ls in (("cross_entropy", 0.0), ("cross_entropy_ls", 0.1)):
        c = new(name)
        n, classes = 6, 5
        tgt = [(2 * i + 3) % classes for i in range(n)]
        c.meta.update({"op": "cross_entropy", "N": n, "classes": classes, "reduction": "mean",
                       "label_smoothing": ls, "targets": tgt,
                       "note": "loss is backpropagated directly (no gy); targets stored as F32 integers"})
        logits = c.inp("logits", [n, classes], -4.0, 4.0)
        t = torch.tensor(tgt, dtype=torch.long)
        c.put("targets", t.to(torch.float64))
        loss = F.cross_entropy(logits, t, label_smoothing=ls)
        loss.backward()
        c.put("loss", loss)
        c.put("glogits", logits.grad)

    return cases


def make_ops_fixture() -> Tuple[Dict[str, object], Dict[str, str]]:
    tensors: Dict[str, object] = {}
    meta: Dict[str, str] = {
        "formula": "inputs fround(lo + (hi - lo) * u(k, i)) with k/lo/hi per tensor in '<case>'.streams; "
                   "loss = sum(y * gy) unless noted; all computed in float64",
    }
    for c in op_cases():
        for tname, t in c.tensors.items():
            tensors[f"{c.name}.{tname}"] = t
        meta[c.name] = json.dumps(c.meta)
    meta["cases"] = json.dumps(sorted(m for m in meta if m not in ("formula",)))
    return tensors, meta


# --------------------------------------------------------------------------------------------
# Optimiser fixtures
# --------------------------------------------------------------------------------------------

OPTIM_CASES: List[Tuple[str, str, Dict[str, object]]] = [
    ("adam", "Adam", {"lr": 1e-2}),
    ("adam_wd", "Adam", {"lr": 1e-2, "weight_decay": 0.1}),
    ("adamw", "AdamW", {"lr": 1e-2, "weight_decay": 0.1}),
    ("sgd", "SGD", {"lr": 0.1}),
    ("sgd_momentum", "SGD", {"lr": 0.1, "momentum": 0.9}),
    ("sgd_dampening", "SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("sgd_nesterov", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
]


def make_optim_fixture() -> Tuple[Dict[str, object], Dict[str, str]]:
    shape = [3, 4]
    p0 = torch.from_numpy(ranged(3000, shape, -1.0, 1.0).astype(np.float64))
    gs = [torch.from_numpy(ranged(3001 + j, shape, -1.0, 1.0).astype(np.float64)) for j in range(3)]
    tensors: Dict[str, object] = {"p0": p0}
    for j, g in enumerate(gs):
        tensors[f"g{j + 1}"] = g
    meta: Dict[str, str] = {
        "formula": "p0 = fround(-1 + 2*u(3000, i)), g_j = fround(-1 + 2*u(3000 + j, i)) for j=1..3, shape [3,4]; "
                   "step j uses gradient g_j; computed in float64",
    }
    for name, cls_name, hp in OPTIM_CASES:
        p = p0.clone().requires_grad_(True)
        opt = getattr(torch.optim, cls_name)([p], **hp)
        for j, g in enumerate(gs):
            p.grad = g.clone()
            opt.step()
            tensors[f"{name}.p{j + 1}"] = p.detach().clone()
        full = {"optimizer": cls_name, **opt.defaults}
        full = {k: v for k, v in full.items() if isinstance(v, (int, float, bool, str, tuple, list)) or v is None}
        meta[name] = json.dumps(full)
    meta["cases"] = json.dumps([c[0] for c in OPTIM_CASES])
    return tensors, meta


# --------------------------------------------------------------------------------------------
# Formula check fixture (lets formula.ts verify itself)
# --------------------------------------------------------------------------------------------

FORMULA_STREAMS = [0, 1, 7, 1000, 1001, 1002, 2000, 3000]


def make_formula_fixture(ref) -> Tuple[Dict[str, object], Dict[str, str]]:
    tensors: Dict[str, object] = {}
    for k in FORMULA_STREAMS:
        tensors[f"u.{k}"] = u_stream(k, 512)  # stored as fround(u)
    # h split in 16-bit halves (each exactly representable in F32)
    for k in (0, 1000):
        h = hash_u32(k, 512)
        tensors[f"h_hi.{k}"] = (h >> np.uint64(16)).astype(np.float64)
        tensors[f"h_lo.{k}"] = (h & np.uint64(0xFFFF)).astype(np.float64)
    meta: Dict[str, str] = {"formula": FORMULA_DESCRIPTION,
                            "u": "u.<k> = fround(u(k, i)) for i = 0..511",
                            "h": "h_hi.<k> = h(k,i) >> 16, h_lo.<k> = h(k,i) & 0xFFFF, i = 0..511"}
    # initial formula state_dict of each model: first 8 entries and the last 2 (full when small)
    for mname, cls in (("mobilenetv2", ref.MobileNetV2), ("resnet18", ref.ResNet18),
                       ("mobilenetv1", ref.MobileNetV1)):
        sd = formula_state_dict(cls())
        names = [n for n in sd if not n.endswith("num_batches_tracked")]
        chosen = names[:8] + names[-2:]
        for n in chosen:
            put_large(tensors, f"init.{mname}.{n}", sd[n].to(torch.float64))
        meta[f"init.{mname}"] = json.dumps(chosen)
    return tensors, meta


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def fmt_cmp(name: str, batch: int, cmp: Dict[str, object]) -> str:
    worst = ", ".join(f"{n} {v:.2e}" for n, v in cmp["grad_rel_worst"][:3])
    nz = ", ".join(f"{n} (rms f64 {v:.1e}, f32 {cmp['near_zero_f32_rms'][n]:.1e})"
                   for n, v in cmp["near_zero"].items()) or "none"
    return (f"{name:12s} B={batch:2d} grad rel L2 median {cmp['grad_rel_median']:.2e} max {cmp['grad_rel_max']:.2e} "
            f"[{worst}] | logits {cmp['logits_rel']:.1e} loss {cmp['loss_abs']:.1e} eval {cmp['eval_logits_rel']:.1e} "
            f"bn {cmp['bn_running_rel_max']:.1e} calib {cmp['calib_running_var_rel_max']:.1e} "
            f"adam max {cmp['adam_rel_max']:.1e} (step mismatch frac max {cmp['adam_step_mismatch_frac_max']:.1e} "
            f"median {cmp['adam_step_mismatch_frac_median']:.1e}) sgd max {cmp['sgd_rel_max']:.1e} | "
            f"relu kinks: {cmp['kinks']['elements']} elems, near {cmp['kinks']['near']}, "
            f"min dist {cmp['kinks']['min_dist']:.1e}, flips {cmp['kinks']['flips']} | "
            f"oneDNN f32: grad median {cmp['onednn']['grad_rel_median']:.2e} max {cmp['onednn']['grad_rel_max']:.2e} "
            f"flips {cmp['onednn']['flips']} | near-zero: {nz}")


def self_check() -> None:
    for k in (0, 1, 999, 1000, 123456):
        h = hash_u32(k, 64, start=0)
        for i in range(64):
            assert int(h[i]) == hash_u32_scalar(k, i), (k, i)
    big = hash_u32(3, 8, start=4_000_000)
    for j in range(8):
        assert int(big[j]) == hash_u32_scalar(3, 4_000_000 + j)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=os.path.join(REPO_ROOT, "..", "shared", "reference"),
                    help="directory holding seed_models.py (default: ../shared/reference from the repo root)")
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "test", "fixtures"))
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--measure", action="store_true",
                    help="only print the float32-vs-float64 table for --measure-batches, write nothing")
    ap.add_argument("--measure-batches", default="8,16")
    ap.add_argument("--models", default="mobilenetv1,mobilenetv2,resnet18")
    args = ap.parse_args()

    torch.set_default_dtype(torch.float32)
    self_check()
    ref = load_reference(os.path.abspath(args.ref))
    classes = {"mobilenetv1": ref.MobileNetV1, "mobilenetv2": ref.MobileNetV2, "resnet18": ref.ResNet18}
    selected = [m.strip() for m in args.models.split(",") if m.strip()]

    if args.measure:
        for b in [int(v) for v in args.measure_batches.split(",")]:
            for name in selected:
                _, _, cmp = make_model_fixture(classes[name], b)
                print(fmt_cmp(name, b, cmp), flush=True)
        return 0

    if not 1 <= args.batch <= 16:
        raise SystemExit("--batch must be in 1..16")
    total = 0
    for name in selected:
        t, meta, cmp = make_model_fixture(classes[name], args.batch)
        size = write_safetensors(os.path.join(args.out, f"model_{name}.safetensors"), t, meta)
        total += size
        print(f"model_{name}.safetensors {size} bytes, {len(t)} tensors", flush=True)
        print("  " + fmt_cmp(name, args.batch, cmp), flush=True)
    for fname, fn in (("ops", make_ops_fixture), ("optim", make_optim_fixture),
                      ("formula", lambda: make_formula_fixture(ref))):
        t, meta = fn()
        size = write_safetensors(os.path.join(args.out, f"{fname}.safetensors"), t, meta)
        total += size
        print(f"{fname}.safetensors {size} bytes, {len(t)} tensors", flush=True)
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
