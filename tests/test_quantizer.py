"""Quantizer arithmetic: error bounds, SQNR floors, STE gradients, GPTQ's optimality on a layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from surgery import SurgeryError
from surgery.linalg import damp_, inverse_, inverse_cholesky_upper_
from surgery.quantize import quantizer as qz
from surgery.quantize.gptq import HessianAccumulator, gptq_quantize, layer_error
from surgery.quantize.lora import QuantLoRALinear
from surgery.export.grid import dequantize_groups

SQNR_FLOOR_DB = {2: 6.0, 3: 13.5, 4: 20.0, 8: 44.5}  # g64 on Gaussian weights (measured: 6.8/14.2/20.8/45.4)


def weights(rows=64, cols=256, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", qz.BITS)
def test_error_bound_grid_and_sqnr(bits):
    w = weights()
    qp = qz.qparams(w, bits, 64)
    q = qz.fake_quant(w, bits, 64, qp=qp)
    step = qp.scale.repeat_interleave(64, dim=1)
    assert float(((q - w).abs() - step / 2).max()) <= 1e-6  # no clipping without LWC: |err| ≤ s/2
    codes = qz.quantize_int(w, bits, 64, qp)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    assert torch.equal(dequantize_groups(codes, qp.scale, qp.zero), q)  # fake-quant values are exactly the grid's
    assert torch.all(qp.zero == qp.zero.round()) and float(qp.zero.min()) >= 0
    assert qz.sqnr_db(w, q) >= SQNR_FLOOR_DB[bits]


def test_zero_is_exactly_representable():
    w = weights()
    w[:, :64] = w[:, :64].abs() + 0.5  # an all-positive group still has zero inside its range
    q = qz.fake_quant(w, 2, 64)
    zeros = torch.zeros(64, 256)
    assert torch.equal(qz.fake_quant(zeros, 2, 64), zeros)
    assert torch.isfinite(q).all()


@pytest.mark.parametrize("bits,gs", [(5, 64), (4, 48), (4, 0)])
def test_bad_bits_and_group_sizes(bits, gs):
    with pytest.raises(SurgeryError):
        qz.check_bits_group(bits, gs)
    with pytest.raises(SurgeryError, match="does not divide"):
        qz.check_bits_group(4, 64, in_features=40)


def test_regulariser_value_and_gradient_match_finite_differences():
    """Σ F⊙(W_eff − W)²: its value equals the hand formula, and with W_eff = Q(W) + (α/r)·BA its
    gradient in the LoRA factors equals central finite differences (float64)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 4).double()
    fisher = torch.rand(4, 16, dtype=torch.float64)
    layer = QuantLoRALinear(lin, bits=2, group_size=8, rank=2, alpha=4.0, fisher=fisher)
    with torch.no_grad():
        layer.lora_B.normal_()
    q = qz.fake_quant(lin.weight.detach(), 2, 8, layer.gamma, layer.beta)
    assert torch.equal(layer.regulariser(), (fisher * (q - lin.weight) ** 2).sum())
    reg = layer.regulariser(after_lora=True)
    manual = (fisher * (q + 2.0 * layer.lora_B @ layer.lora_A - lin.weight) ** 2).sum()
    torch.testing.assert_close(reg, manual, rtol=1e-12, atol=0)
    reg.backward()
    eps = 1e-6
    for p in (layer.lora_A, layer.lora_B):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = float(layer.regulariser(after_lora=True))
                p.view(-1)[i] -= 2 * eps
                down = float(layer.regulariser(after_lora=True))
                p.view(-1)[i] += eps
            fd.view(-1)[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(p.grad, fd, rtol=1e-6, atol=1e-9)


def test_clipping_parameters_learn_from_the_regulariser_alone():
    """Before-LoRA, only γ/β feel the regulariser (through the straight-through rounding), and
    training them on it lowers the Fisher-weighted weight error."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    layer = QuantLoRALinear(lin, bits=2, group_size=32, rank=4, alpha=8.0, fisher=torch.rand(32, 64))
    assert torch.equal(torch.sigmoid(layer.gamma), torch.full((32, 2), torch.sigmoid(torch.tensor(4.0)).item()))
    opt = torch.optim.Adam(layer.lwc_parameters(), lr=0.05)
    history = []
    for _ in range(120):
        opt.zero_grad()
        reg = layer.regulariser()
        history.append(float(reg.detach()))
        reg.backward()
        assert layer.lora_A.grad is None and layer.lora_B.grad is None
        opt.step()
    assert min(history) < 0.95 * history[0]  # seen: 0.907× (2 bits leave clipping little room)
    assert float(torch.sigmoid(layer.gamma.detach()).mean()) < 0.9  # it learned to clip


def correlated_inputs(n=2048, cols=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    return torch.randn(n, cols, generator=g) @ mix * torch.linspace(0.2, 3.0, cols)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_a_nontrivial_hessian(bits, act_order):
    W = weights(32, 128)
    acc = HessianAccumulator(128)
    X = correlated_inputs()
    for chunk in X.split(500):
        acc.add(chunk)
    torch.testing.assert_close(acc.H, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-3)
    Q, qp = gptq_quantize(W, acc.H, bits, 32, act_order=act_order)
    rtn = qz.fake_quant(W, bits, 32)
    assert layer_error(W, Q, acc.H) < 0.9 * layer_error(W, rtn, acc.H)
    codes = qz.quantize_int(Q, bits, 32, qp)  # GPTQ's output lies on its own (exported) grid
    assert torch.equal(dequantize_groups(codes, qp.scale, qp.zero), Q)


def test_gptq_with_identity_hessian_is_rtn():
    W = weights(16, 64)
    Q, _ = gptq_quantize(W, torch.eye(64), 3, 16, damp=0.0)
    assert torch.equal(Q, qz.fake_quant(W, 3, 16))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_in_the_hessians_own_storage_is_the_same_quantization(act_order):
    """`overwrite=True` (the engine hands each layer's Hessian over) gives bit-identical weights and grid;
    without it the caller's H is left as it was. A dead input (no data) gets a zero weight either way."""
    W, X = weights(32, 128), correlated_inputs()
    X[:, 7] = 0
    H = 2 * X.t() @ X / X.shape[0]
    kept = H.clone()
    Q, qp = gptq_quantize(W, H, 3, 32, act_order=act_order)
    assert torch.equal(H, kept)
    Q2, qp2 = gptq_quantize(W, H, 3, 32, act_order=act_order, overwrite=True)
    assert torch.equal(Q, Q2) and torch.equal(qp.scale, qp2.scale) and torch.equal(qp.zero, qp2.zero)
    assert not torch.equal(H, kept)  # its storage was the working space
    assert torch.equal(Q[:, 7], torch.zeros(32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_is_computed_in_the_hessians_memory(dtype):
    """On the CPU H⁻¹ and the upper factor of H⁻¹ are computed by LAPACK in H's own memory: the
    same storage comes back, equal to the dense formulas, and no second matrix is allocated (torch's
    `cholesky(out=H)` would allocate one: 32 MiB here)."""
    from scripts.memory import Peak

    g = torch.Generator().manual_seed(0)
    n = 2048
    A = torch.randn(n, 256, generator=g, dtype=torch.float64)
    H64 = A @ A.t() / 256 + 0.5 * torch.eye(n, dtype=torch.float64)
    H, expected = H64.to(dtype, copy=True), torch.linalg.inv(H64)
    ptr, tol = H.data_ptr(), (1e-10 if dtype == torch.float64 else 1e-4)
    # one-time costs: SciPy's import, the BLAS buffers (sized by the first problem this large: ~4 MiB in float32)
    inverse_(torch.eye(n, dtype=dtype))
    with Peak(interval=0.0002) as peak:
        Hinv = inverse_(H)
    assert Hinv.data_ptr() == ptr and peak.extra < 0.25 * H.numel() * H.element_size() / 2**20, peak.extra
    torch.testing.assert_close(Hinv.double(), expected, rtol=tol, atol=tol)
    U = inverse_cholesky_upper_(H64.to(dtype, copy=True))
    assert torch.equal(U, U.triu())
    torch.testing.assert_close((U.t() @ U).double(), expected, rtol=tol, atol=tol)


def test_damping_and_inverse_factor_match_the_dense_formulas():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(40, 24, generator=g, dtype=torch.float64)
    H = A.t() @ A / 40
    H[5, :] = H[:, 5] = 0
    dense = H.clone()
    dense[5, 5] = 1.0
    dense += 0.01 * dense.diagonal().mean() * torch.eye(24, dtype=torch.float64)
    dead = damp_(H, 0.01)
    assert torch.equal(dead, torch.arange(24) == 5) and torch.equal(H, dense)
    U = inverse_cholesky_upper_(H)
    assert torch.equal(U, U.triu())
    torch.testing.assert_close(U.t() @ U, torch.linalg.inv(dense), rtol=1e-10, atol=1e-10)
    with pytest.raises(SurgeryError, match="not positive definite"):
        inverse_cholesky_upper_(-torch.eye(4))


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps from the forward of `fn()` for its backward (outside any recomputation)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_training_recomputes_the_quantizer_with_the_same_gradients():
    """ApiQ's layer keeps no weight-sized quantizer intermediates from its forward (they are recomputed
    in the backward pass), shares the base's frozen weight instead of copying it, and its gradients in
    γ, β, the LoRA factors and the input are bit-identical to those of the plain graph."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    layer = QuantLoRALinear(lin, bits=3, group_size=32, rank=4, alpha=8.0, fisher=torch.rand(96, 256))
    with torch.no_grad():
        layer.lora_B.normal_()
    assert layer.weight.data_ptr() == lin.weight.data_ptr()
    x = torch.randn(6, 256, requires_grad=True)
    params = [x, layer.gamma, layer.beta, layer.lora_A, layer.lora_B]

    def recomputed():
        return (layer(x) ** 2).sum() + layer.regulariser(after_lora=True)

    def plain():
        y = F.linear(x, layer.qweight(), layer.bias) + F.linear(F.linear(x, layer.lora_A), layer.lora_B) * 2.0
        q = layer.qweight() + 2.0 * layer.lora_B @ layer.lora_A
        return (y**2).sum() + (layer.fisher * (q - layer.weight) ** 2).sum()
    loss, ref = recomputed(), plain()
    assert torch.equal(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        assert torch.equal(a, b)
    weight_bytes = lin.weight.numel() * 4
    assert _saved_bytes(recomputed) < 0.5 * weight_bytes < 3 * weight_bytes < _saved_bytes(plain)
