"""Peak FLOP/s of a GPU, by its exact model and the dtype of its matrix products, for MFU.

    peak_tflops("NVIDIA H100 80GB HBM3", "bf16")   # 989.4: an H100 SXM's dense bf16 peak
    peak_tflops("NVIDIA L40", "tf32")              # 90.5, not the L40S's 183 nor the L4's 60
    device_peak_flops(torch.device("cuda", 0), "bf16")   # this GPU's, in FLOP/s; 0 if unknown
    mfu(flops_per_token=6e8, tokens_per_s=1e6, peak_flops=989e12, devices=8)

Model FLOPs utilisation (MFU, Chowdhery et al., "PaLM", 2022, appendix B) divides the FLOPs the
model needs per second by what the hardware could do at its peak. The peak depends on the part
(an H100 in its SXM form has 31% more than in its PCIe form) and on the dtype the matrices are
multiplied in: bf16 under autocast, TF32 for float32 matmuls on tensor cores (which the trainer
allows on GPUs), plain FP32 otherwise. The figures are NVIDIA's data sheets' dense numbers: the
sheets print tensor-core peaks "with sparsity", twice the dense ones, which training does not get.

Names are matched exactly, token by token, never by substring: "L4" must not match "L40", nor
"A10" an "A100", nor "H100" an "H100 NVL".
"""

import re

import torch

# (bf16, tf32, fp32) dense TFLOP/s per GPU, from NVIDIA's data sheets.
PEAK_TFLOPS: dict[tuple[str, str], tuple[float, float, float]] = {
    ("A10", ""): (125.0, 62.5, 31.2),
    ("A100", ""): (312.0, 156.0, 19.5),  # SXM and PCIe alike
    ("L4", ""): (121.0, 60.0, 30.3),
    ("L40", ""): (181.0, 90.5, 90.5),
    ("L40S", ""): (362.0, 183.0, 91.6),
    ("H100", "SXM"): (989.4, 494.7, 66.9),
    ("H100", "PCIe"): (756.5, 378.0, 51.2),
    ("H100", "NVL"): (835.5, 417.5, 60.0),
    ("H200", "SXM"): (989.4, 494.7, 66.9),
    ("H200", "NVL"): (835.5, 417.5, 60.0),
    ("H800", "SXM"): (989.4, 494.7, 66.9),  # an H100 with less NVLink: the same arithmetic
    ("H800", "PCIe"): (756.5, 378.0, 51.2),
    ("GH200", ""): (989.4, 494.7, 66.9),  # the Grace Hopper superchip's H100/H200 GPU
    ("B200", ""): (2250.0, 1125.0, 75.0),  # HGX B200's 8-GPU figures, divided by 8
}
DTYPES = ("bf16", "tf32", "fp32")
CHIPS = {chip for chip, _ in PEAK_TFLOPS}


def identify(device_name: str) -> tuple[str, str] | None:
    """The (chip, form factor) of a name as torch.cuda.get_device_name reports it, or None.

    "NVIDIA H100 80GB HBM3" -> ("H100", "SXM"); "NVIDIA A100-SXM4-80GB" -> ("A100", "").
    """
    words = re.split(r"[\s\-_/]+", device_name.upper())
    chip = next((w for w in words if w in CHIPS), None)
    if chip is None:
        return None
    if (chip, "") in PEAK_TFLOPS:  # one form factor, or all with the same peak
        return chip, ""
    # Hopper parts: the SXM module's name says only its memory ("H100 80GB HBM3", "H200").
    form = "PCIe" if "PCIE" in words else "NVL" if "NVL" in words else "SXM"
    return (chip, form) if (chip, form) in PEAK_TFLOPS else None


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of one device for matrix products in dtype (bf16, tf32 or fp32)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    part = identify(device_name)
    return PEAK_TFLOPS[part][DTYPES.index(dtype)] if part else None


def matmul_dtype(device_type: str, compute_dtype: str) -> str:
    """The dtype the trainer's matrix products run in, for its compute dtype (fp32 or bf16):
    bf16 as it says; float32 as TF32 on GPUs (the trainer allows it), as float32 on CPUs."""
    if compute_dtype != "fp32":
        return compute_dtype
    return "tf32" if device_type == "cuda" else "fp32"


def device_peak_flops(device: torch.device, dtype: str, tflops: float = 0.0) -> float:
    """One device's peak FLOP/s: `tflops` when given (--peak-tflops), else a GPU's from the
    table; 0 when unknown (a CPU, a GPU not in the table), and then MFU is not reported."""
    if tflops:
        return tflops * 1e12
    if device.type == "cuda":
        return (peak_tflops(torch.cuda.get_device_name(device), dtype) or 0.0) * 1e12
    return 0.0


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float, devices: int) -> float:
    """The share of the devices' combined peak that the model's arithmetic used."""
    return flops_per_token * tokens_per_s / (peak_flops * devices)
