"""Backend.conv2d's and conv2d_input_grad's cache blocking: products made one block of
output rows at a time equal the single product (forward, with and without the weight's
gradient to come; and the input's gradient, on one thread and split by channel)."""
import numpy as np
import pytest
import torch

import minitorch_cnn as mt
import minitorch_cnn.nn.functional as F
from minitorch_cnn import backends
from minitorch_cnn.backends import Window
from optest import split_everything

WHOLE = 1 << 62  # a cache block no product reaches: the product whole
CASES = [  # (C, H, W, N), Cout, kernel, stride, padding
    ((1, 9, 7, 3), 4, (3, 2), (1, 1), (1, 0)),
    ((3, 11, 10, 2), 5, (3, 3), (2, 1), (1, 1)),
    ((2, 8, 8, 4), 3, (5, 5), (1, 1), (2, 2)),
]


@pytest.fixture
def host(monkeypatch):
    """The NumPy backend on the column path for every convolution (the small ones read
    their columns in place instead: test_host_kernels.py)."""
    be = backends.get_backend_by_name("numpy")
    monkeypatch.setattr(be, "SMALL_CONV_CHANNELS", 0)
    monkeypatch.setattr(be, "cache_block_bytes", be.cache_block_bytes)
    monkeypatch.setattr(be, "buffer_block_bytes", be.buffer_block_bytes)
    return be


@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("shape,cout,kernel,stride,padding", CASES)
def test_row_blocks_equal_one_product(host, shape, cout, kernel, stride, padding, weight_grad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w2 = rng.standard_normal((cout, shape[0] * kernel[0] * kernel[1])).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    args = (x, w2, bias, Window(*kernel, *stride, *padding))
    host.cache_block_bytes = WHOLE
    whole, whole_backward = host.conv2d(*args, weight_grad=weight_grad)
    host.cache_block_bytes = 1  # one output row per block
    blocked, blocked_backward = host.conv2d(*args, weight_grad=weight_grad)
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)
    if weight_grad:
        gc = rng.standard_normal((cout, whole[0].size)).astype(np.float32)
        np.testing.assert_array_equal(blocked_backward(gc)[0], whole_backward(gc)[0])
    else:
        assert blocked_backward is None and whole_backward is None


def _weight_grad_reference(x, gc, kernel, stride, padding):
    """``gc @ cols.T`` in float64, with cols im2col's columns of the CHWN array ``x``."""
    c, h, w, n = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xpad = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cols = np.stack([xpad[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                     for i in range(kh) for j in range(kw)], axis=1)  # (C, kh*kw, OH, OW, N)
    return gc.astype(np.float64) @ cols.reshape(c * kh * kw, -1).T


@pytest.mark.parametrize("blocks", [WHOLE, 1])
@pytest.mark.parametrize("shape,cout,kernel,stride,padding", CASES)
def test_weight_backward_gives_the_bias_gradient_with_it(host, shape, cout, kernel, stride, padding, blocks):
    """With ``bias_grad`` the function for the weight's gradient also gives the bias's,
    the output's gradient's row sums; the output and the weight's gradient are the same."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    w2 = rng.standard_normal((cout, shape[0] * kernel[0] * kernel[1])).astype(np.float32)
    args = (x, w2, rng.standard_normal(cout).astype(np.float32), Window(*kernel, *stride, *padding))
    host.cache_block_bytes = blocks
    out, backward = host.conv2d(*args, weight_grad=True)
    out_both, backward_both = host.conv2d(*args, weight_grad=True, bias_grad=True)
    np.testing.assert_array_equal(out_both, out)
    gc = rng.standard_normal((cout, out[0].size)).astype(np.float32)
    (gw, no_bias), (gw_both, gb) = backward(gc), backward_both(gc)
    assert no_bias is None and gw.shape == w2.shape
    np.testing.assert_array_equal(gw_both, gw)
    np.testing.assert_allclose(gw, _weight_grad_reference(x, gc, kernel, stride, padding), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, gc.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape,cout,kernel,stride,padding", CASES + [((4, 7, 9, 2), 6, (2, 3), (2, 3), (1, 1))])
def test_blocked_input_grad_equals_col2im_of_one_product(host, shape, cout, kernel, stride, padding, threads):
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((cout, shape[0] * kernel[0] * kernel[1])).astype(np.float32)
    _, h, w, n = shape
    oh, ow = ((size + 2 * p - k) // s + 1 for size, k, s, p in zip((h, w), kernel, stride, padding))
    gc = rng.standard_normal((cout, oh * ow * n)).astype(np.float32)
    args = (w2, gc, shape, Window(*kernel, *stride, *padding))
    host.cache_block_bytes = WHOLE
    whole = host.conv2d_input_grad(*args)
    dcols = (w2.T @ gc).reshape(shape[0], *kernel, oh, ow, n)
    np.testing.assert_array_equal(whole, host.col2im(dcols, shape, args[-1]))
    host.cache_block_bytes = 1  # one output row per block
    with split_everything(threads):
        blocked = host.conv2d_input_grad(*args)
    assert blocked.shape == shape
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)


def test_blocked_conv2d_trains_like_pytorch(host):
    host.cache_block_bytes = 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal((3, 4, 5, 8)).astype(np.float32)
    X, W, B = (mt.tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.conv2d(X, W, B, stride=(2, 1), padding=(1, 1))
    (out * mt.tensor(g)).sum().backward()
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=(2, 1), padding=(1, 1))
    (tout * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-4)
    for ours, theirs in ((X, tx), (W, tw), (B, tb)):
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_blocks_that_share_one_buffer_are_at_most_buffer_block_bytes(host):
    """Without keeping the columns (inference) one buffer serves every block, so blocks
    are no larger than buffer_block_bytes; kept columns use cache_block_bytes alone."""
    host.cache_block_bytes, host.buffer_block_bytes = 1 << 20, 1 << 16
    total = 8 << 20  # 8 MB over 64 output rows
    kept, buffered = host._rows_per_block(64, total), host._rows_per_block(64, total, buffered=True)
    assert kept > buffered == 1
    host.buffer_block_bytes = host.cache_block_bytes
    assert host._rows_per_block(64, total, buffered=True) == kept
    host.cache_block_bytes = host.buffer_block_bytes = WHOLE  # no blocking at all
    assert host._rows_per_block(64, total, buffered=True) is None


def test_core_cache_bytes_reads_the_largest_unshared_data_cache(tmp_path):
    from minitorch_cnn.backends.host import core_cache_bytes

    for index, (kind, size, shared) in enumerate([("Data", "48K", "0"), ("Instruction", "32K", "0"),
                                                  ("Unified", "2048K", "0"), ("Unified", "30720K", "0-1")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, text in (("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (folder / name).write_text(text + "\n")
    assert core_cache_bytes(caches=tmp_path) == 2048 << 10
    assert core_cache_bytes(default=123, caches=tmp_path / "missing") == 123
