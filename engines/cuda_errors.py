"""Which CUDA runtime errors poison the process, so only a new process can use the GPU again.

The set is every cudaError_t whose CUDA Runtime API description ends "This leaves the
process in an inconsistent state and any further CUDA work will return the same error.
To continue using CUDA, the process must be terminated and relaunched" (checked against
the descriptions shipped with cuda-bindings 13.5). Errors such as cudaErrorECCUncorrectable
or cudaErrorContextIsDestroyed are not documented so; if one does poison the process, the
escalation ladder still gets there (fresh contexts fail, the engine reload fails, the worker
restarts), only later.
"""

from __future__ import annotations

STICKY_CUDA_ERRORS = frozenset(
    {
        "cudaErrorIllegalAddress",  # 700
        "cudaErrorLaunchTimeout",  # 702
        "cudaErrorAssert",  # 710
        "cudaErrorHardwareStackError",  # 714
        "cudaErrorIllegalInstruction",  # 715
        "cudaErrorMisalignedAddress",  # 716
        "cudaErrorInvalidAddressSpace",  # 717
        "cudaErrorInvalidPc",  # 718
        "cudaErrorLaunchFailure",  # 719
        "cudaErrorTensorMemoryLeak",  # 721
        "cudaErrorContained",  # 226
        "cudaErrorMpsClientTerminated",  # 810
        "cudaErrorExternalDevice",  # 911
    }
)


def is_sticky_cuda_error(name: str) -> bool:
    """True for a CUDA runtime error name (e.g. "cudaErrorIllegalAddress") that poisons the process."""
    return name in STICKY_CUDA_ERRORS
