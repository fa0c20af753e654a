"""Print what a benchmark or GPU check ran on: host, Python, torch/CUDA, device, optional peers
(triton, POT, flash-sinkhorn) and the sigma_kernels backends with the reason any is unavailable."""
import platform
import socket

import torch


def main():
    print("host", socket.gethostname(), "python", platform.python_version())
    print("torch", torch.__version__, "cuda", torch.version.cuda, "threads", torch.get_num_threads(), "device",
          torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")
    for mod in ("triton", "ot", "flash_sinkhorn", "sigma_kernels", "sigma"):
        try:
            m = __import__(mod)
            print(mod, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
        except Exception as exc:  # report, do not fail: each is optional here
            print(mod, "not importable:", type(exc).__name__, exc)
    try:
        import sigma_kernels
        for name, info in sigma_kernels.backend_info().items():
            print("backend", name, info)
    except Exception as exc:
        print("sigma_kernels backends: not importable:", type(exc).__name__, exc)


if __name__ == "__main__":
    main()
