"""Output-size rules for the fake (meta) kernels, mirroring csrc/common/shapes.h.

They work on plain ints and on symbolic sizes alike, so torch.compile can trace through fastconv.
"""


def conv_output_size(in_size, kernel, stride, padding, dilation):
    return (in_size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pooling_output_size(in_size, kernel, padding, stride, dilation, ceil_mode):
    """torch's rule: in ceil mode the last window must start inside the input or the left padding."""
    span = dilation * (kernel - 1) + 1
    out = (in_size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= in_size + padding:
        out = out - 1
    return out
