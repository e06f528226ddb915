"""`python -m fastconv`: what this installation of fastconv was built with and will run on."""
import platform

import torch

import fastconv


def main():
    info = fastconv.build_info()
    print(f"fastconv {fastconv.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"python {platform.python_version()} on {platform.machine()}")
    if info["cuda"]:
        print(f"CUDA kernels: compiled for {info['cuda_archs'] or 'the visible GPU'}")
        if torch.cuda.is_available():
            print(f"CUDA device: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible)")
        else:
            print("CUDA device: none visible")
    else:
        print("CUDA kernels: not compiled")
    print(f"CPU kernels: instruction set {info['cpu_isa']} ({platform.processor() or platform.machine()})")
    print(f"threads: {torch.get_num_threads()} (torch.set_num_threads / OMP_NUM_THREADS)")


if __name__ == "__main__":
    main()
