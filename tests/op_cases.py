"""The cases of each image op, one row each: the table that test_op_cases.py runs against
PyTorch (forward and gradients, float32 and float64, on every test backend) and through
the fast paths (the NumPy backend's C kernels, and the CUDA kernels on the CPU through
test_kernels.py's g++ shim) against the reference bodies. A new case is one row.

Shapes are NCHW, or CHW for an unbatched input. ``noncontiguous``: the op reads
``x.transpose(-1, -2)`` of an input drawn with its last two axes swapped.
"""
from typing import NamedTuple, Optional, Tuple, Union

Pair = Union[int, Tuple[int, int]]


class ConvCase(NamedTuple):
    name: str
    x: tuple
    weight: tuple
    bias: bool = True
    stride: Pair = 1
    padding: Union[Pair, str] = 0
    dilation: Pair = 1
    groups: int = 1
    noncontiguous: bool = False

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


CONV_CASES = [
    ConvCase("plain", (2, 3, 7, 6), (4, 3, 3, 3), padding=1),
    ConvCase("dilation2", (2, 3, 9, 8), (4, 3, 3, 3), padding=2, dilation=2),
    ConvCase("dilation_pair_stride2", (2, 2, 9, 8), (3, 2, 3, 2), stride=2, padding=(2, 0), dilation=(2, 1)),
    ConvCase("dilation3_stride3_leftover", (1, 2, 11, 10), (2, 2, 2, 3), bias=False, stride=3, dilation=3),
    ConvCase("groups2", (2, 4, 7, 6), (6, 2, 3, 3), padding=1, groups=2),
    ConvCase("groups3_stride2_dilation2", (2, 6, 9, 9), (3, 2, 3, 3), stride=2, padding=1, dilation=2, groups=3),
    ConvCase("depthwise", (2, 4, 7, 7), (4, 1, 3, 3), padding=1, groups=4),
    ConvCase("depthwise_multiplier2_stride2", (2, 3, 8, 8), (6, 1, 3, 3), bias=False, stride=2, padding=1,
             groups=3),
    ConvCase("pointwise", (3, 5, 4, 6), (7, 5, 1, 1)),
    ConvCase("same_odd_kernel", (2, 3, 7, 6), (4, 3, 3, 5), padding="same"),
    ConvCase("same_even_kernel_extra_bottom_right", (2, 3, 7, 6), (4, 3, 2, 4), padding="same"),
    ConvCase("same_dilation3_even_kernel", (1, 2, 8, 9), (3, 2, 2, 2), padding="same", dilation=3),
    ConvCase("same_depthwise_dilation2", (2, 4, 6, 7), (4, 1, 3, 3), padding="same", dilation=2, groups=4),
    ConvCase("valid", (2, 3, 7, 6), (4, 3, 3, 3), padding="valid"),
    ConvCase("unbatched", (3, 7, 6), (4, 3, 3, 3), padding=1),
    ConvCase("unbatched_grouped_same", (4, 6, 5), (4, 2, 2, 3), padding="same", groups=2),
    ConvCase("empty_batch", (0, 3, 5, 5), (4, 3, 3, 3), padding=1),
    ConvCase("empty_batch_grouped", (0, 4, 5, 5), (4, 2, 3, 3), groups=2),
    ConvCase("noncontiguous_grouped_dilated", (2, 4, 6, 8), (4, 2, 3, 3), padding=1, dilation=(1, 2), groups=2,
             noncontiguous=True),
    ConvCase("noncontiguous_stride2", (2, 3, 7, 9), (4, 3, 3, 3), stride=2, padding=1, noncontiguous=True),
    ConvCase("kernel_is_the_dilated_input", (1, 2, 5, 5), (3, 2, 3, 3), dilation=2),
]


class PoolCase(NamedTuple):
    name: str
    op: str                          # "max" or "avg"
    x: tuple
    kernel_size: Pair
    stride: Optional[Pair] = None
    padding: Pair = 0
    dilation: Pair = 1               # max only
    ceil_mode: bool = False
    count_include_pad: bool = True   # avg only
    divisor_override: Optional[int] = None  # avg only
    return_indices: bool = False     # max only
    noncontiguous: bool = False

    def kwargs(self):
        common = dict(stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode)
        if self.op == "max":
            return dict(common, dilation=self.dilation, return_indices=self.return_indices)
        return dict(common, count_include_pad=self.count_include_pad, divisor_override=self.divisor_override)


POOL_CASES = [
    PoolCase("max_plain", "max", (2, 3, 8, 7), 2),
    PoolCase("max_padding_stride1", "max", (2, 2, 7, 5), 3, 1, 1),
    PoolCase("max_dilation2", "max", (2, 3, 9, 9), 3, 2, 1, dilation=2),
    PoolCase("max_dilation_pair", "max", (1, 2, 9, 10), (2, 3), (1, 2), (1, 1), dilation=(3, 2)),
    PoolCase("max_ceil_odd_input", "max", (2, 3, 7, 9), 2, ceil_mode=True),
    PoolCase("max_ceil_padding_near_edge", "max", (2, 3, 10, 9), 3, 2, 1, ceil_mode=True),
    PoolCase("max_ceil_last_window_would_start_in_padding", "max", (1, 2, 4, 4), 2, 3, 1, ceil_mode=True),
    PoolCase("max_ceil_dilated", "max", (2, 2, 10, 11), 3, 2, 1, dilation=2, ceil_mode=True),
    PoolCase("max_indices", "max", (2, 3, 8, 8), 2, return_indices=True),
    PoolCase("max_indices_padding_ceil", "max", (2, 2, 9, 7), 3, 2, 1, ceil_mode=True, return_indices=True),
    PoolCase("max_indices_dilated", "max", (1, 2, 9, 9), 2, 2, 1, dilation=2, return_indices=True),
    PoolCase("max_unbatched_indices", "max", (3, 7, 6), 2, 1, return_indices=True),
    PoolCase("max_empty_batch", "max", (0, 3, 6, 6), 2),
    PoolCase("max_noncontiguous_ceil", "max", (2, 3, 7, 8), 2, ceil_mode=True, noncontiguous=True),
    PoolCase("avg_plain", "avg", (2, 3, 8, 7), 2),
    PoolCase("avg_padding_counted", "avg", (2, 2, 7, 5), 3, 2, 1),
    PoolCase("avg_padding_not_counted", "avg", (2, 2, 7, 5), 3, 2, 1, count_include_pad=False),
    PoolCase("avg_ceil_padding_near_edge", "avg", (2, 3, 10, 9), 3, 2, 1, ceil_mode=True),
    PoolCase("avg_ceil_padding_not_counted", "avg", (2, 3, 10, 9), 3, 2, 1, ceil_mode=True, count_include_pad=False),
    PoolCase("avg_ceil_last_window_would_start_in_padding", "avg", (1, 2, 4, 4), 2, 3, 1, ceil_mode=True),
    PoolCase("avg_ceil_no_padding", "avg", (2, 2, 7, 9), (2, 3), ceil_mode=True),
    PoolCase("avg_divisor_override", "avg", (2, 3, 8, 7), 3, 2, 1, divisor_override=5),
    PoolCase("avg_divisor_override_ceil", "avg", (2, 3, 8, 7), 3, 2, 1, ceil_mode=True, divisor_override=-2),
    PoolCase("avg_unbatched", "avg", (3, 7, 6), 3, 2, 1, ceil_mode=True, count_include_pad=False),
    PoolCase("avg_empty_batch", "avg", (0, 3, 6, 6), 2),
    PoolCase("avg_noncontiguous", "avg", (2, 3, 7, 8), (3, 2), (2, 1), (1, 0), noncontiguous=True),
]


class UnpoolCase(NamedTuple):
    name: str
    x: tuple
    kernel_size: Pair
    stride: Optional[Pair] = None
    padding: Pair = 0
    ceil_mode: bool = False
    output_size: Optional[tuple] = None


UNPOOL_CASES = [
    UnpoolCase("plain", (2, 3, 8, 8), 2),
    UnpoolCase("odd_input_output_size", (2, 3, 9, 7), 2, output_size=(9, 7)),
    UnpoolCase("overlapping_windows", (1, 2, 7, 7), 3, 1, 1),
    UnpoolCase("padding_ceil_output_size", (2, 2, 9, 8), 3, 2, 1, ceil_mode=True, output_size=(2, 2, 9, 8)),
    UnpoolCase("unbatched", (3, 6, 6), 2),
]


def case_id(case):
    return case.name
