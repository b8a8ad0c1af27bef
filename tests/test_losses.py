"""The fused `F.linear_cross_entropy` path of `next_token_loss` equals the chunked, checkpointed fallback."""

import pytest
import torch
from torch import nn

from tracenas.runtime import losses
from tracenas.runtime.losses import ce_impl, fused_ce_available, next_token_loss, set_ce_impl

needs_fused = pytest.mark.skipif(not fused_ce_available(), reason="torch < 2.13: no F.linear_cross_entropy")


@pytest.fixture
def restore_impl():
    previous = losses._ce_impl
    yield
    losses._ce_impl = previous


def _loss_and_grad(impl: str, hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear, chunk: int):
    set_ce_impl(impl)
    h = hidden.clone().requires_grad_(True)
    loss = next_token_loss(h, targets, head, chunk)
    loss.backward()
    return loss.detach(), h.grad


@needs_fused
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [3, 1024])
def test_fused_equals_chunked_loss_and_input_gradient(restore_impl, bias, chunk):
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    head.requires_grad_(False)
    hidden, targets = torch.randn(3, 7, 16, generator=g), torch.randint(0, 50, (3, 7), generator=g)
    ref = torch.nn.functional.cross_entropy(head(hidden).reshape(-1, 50), targets.reshape(-1))
    loss_f, grad_f = _loss_and_grad("fused", hidden, targets, head, chunk)
    loss_c, grad_c = _loss_and_grad("chunked", hidden, targets, head, chunk)
    assert loss_f == pytest.approx(float(ref), rel=1e-6) and loss_c == pytest.approx(float(ref), rel=1e-6)
    assert torch.allclose(grad_f, grad_c, atol=1e-7, rtol=1e-5)


def test_choice_of_implementation(restore_impl):
    set_ce_impl("chunked")
    assert ce_impl() == "chunked"
    set_ce_impl("auto")
    assert ce_impl() == ("fused" if fused_ce_available() else "chunked")
    with pytest.raises(ValueError, match="unknown"):
        set_ce_impl("liger")


@pytest.mark.parametrize("bias", [False, True])
def test_head_logits_stay_float32_under_bf16_autocast(bias):
    """The output layer under bf16 autocast: float32 logits and gradients, not bf16-rounded ones."""
    torch.manual_seed(0)
    head = nn.Linear(64, 500, bias=bias)
    hidden = (torch.randn(8, 64) * 30).requires_grad_(True)  # a damaged model's large activations
    exact = losses.head_logits(hidden.double(), head.weight.double(), None if head.bias is None else head.bias.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = losses.head_logits(hidden, head.weight, head.bias)
        rounded = torch.nn.functional.linear(hidden, head.weight, head.bias).float()  # what autocast alone gives
    assert got.dtype == torch.float32
    assert (got.double() - exact).abs().max() < 1e-3 < (rounded.double() - exact).abs().max()
    got.sum().backward()
    assert hidden.grad.dtype == torch.float32
    assert torch.allclose(hidden.grad, head.weight.sum(0).expand_as(hidden), atol=1e-4)
