"""MAE-based unsupervised search (fastnas.nn.mae): the patch mask, the model, the loss, and the search step
driven by it without labels. Tiny supernets, 16x16 images; the whole file runs in seconds on a CPU.

The cost measurement quoted in ``fastnas/nn/mae.py`` (not a test: it takes ~20 s on one core):

    OMP_NUM_THREADS=1 python -c "
    import time, torch, torch.nn.functional as F
    from fastnas.nn import SearchNetwork; from fastnas.nn.mae import MAESearchModel, mae_loss
    net = SearchNetwork('darts', C=16, layers=8, partial_channels=4); mae = MAESearchModel(SearchNetwork(
        'darts', C=16, layers=8, partial_channels=4)); x = torch.randn(32, 3, 32, 32); y = torch.randint(0, 10, (32,))
    # time F.cross_entropy(net(x), y).backward() against mae_loss(mae, x)[0].backward(), median of 3 after a warm-up
    "
"""
import pytest
import torch

from fastnas.nn import SearchNetwork
from fastnas.nn.mae import MAESearchModel, MultiScaleDecoder, mae_loss, masked_mse, random_patch_mask
from fastnas.search.step import SearchStep
from fastnas.spaces.darts import Genotype


def darts_net(**kw):
    torch.manual_seed(0)
    return SearchNetwork("darts", C=8, layers=3, partial_channels=2, **kw)


def nb201_net(**kw):
    torch.manual_seed(0)
    return SearchNetwork("nb201", C=8, layers=1, partial_channels=1, edge_norm=False, **kw)


def images(b=4, size=16, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- the mask -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,patch,ratio", [(32, 4, 0.5), (16, 4, 0.75), (16, 2, 0.3), ((16, 8), 4, 0.5)])
def test_mask_exact_count_and_patch_aligned(size, patch, ratio):
    B = 16
    mask = random_patch_mask(B, size, patch, ratio, generator=torch.Generator().manual_seed(0))
    H, W = (size, size) if isinstance(size, int) else size
    assert mask.dtype == torch.bool and mask.shape == (B, 1, H, W)
    n_patches = (H // patch) * (W // patch)
    patches = mask.view(B, H // patch, patch, W // patch, patch)
    # constant within each patch
    assert (patches == patches[:, :, :1, :, :1]).all()
    per_patch = patches[:, :, 0, :, 0].reshape(B, -1)
    assert (per_patch.sum(1) == round(ratio * n_patches)).all()
    assert (mask.view(B, -1).sum(1) == round(ratio * n_patches) * patch * patch).all()


def test_mask_differs_between_images_and_is_seeded():
    mask = random_patch_mask(8, 32, 4, 0.5, generator=torch.Generator().manual_seed(3))
    flat = mask.view(8, -1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))
    again = random_patch_mask(8, 32, 4, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, again)
    # the default draws from the global RNG: seeding it reproduces the masks
    torch.manual_seed(5)
    a = random_patch_mask(8, 32, 4, 0.5)
    torch.manual_seed(5)
    b = random_patch_mask(8, 32, 4, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, mask)


def test_mask_is_uniform_over_patches():
    # every patch is hidden about half the time (a bias towards low indices would show here)
    mask = random_patch_mask(2000, 16, 4, 0.5, generator=torch.Generator().manual_seed(0))
    freq = mask[:, 0, ::4, ::4].float().mean(0)
    assert (freq - 0.5).abs().max() < 0.05


@pytest.mark.parametrize("size,patch,ratio", [(30, 4, 0.5), ((32, 30), 4, 0.5), (32, 4, 0.0), (32, 4, 1.0),
                                              (32, 4, -0.1), (32, 4, 1.5), (32, 0, 0.5), (8, 4, 0.1)])
def test_mask_rejects_bad_settings(size, patch, ratio):
    with pytest.raises(ValueError):
        random_patch_mask(2, size, patch, ratio)


def test_model_rejects_bad_masking_at_construction():
    with pytest.raises(ValueError):
        MAESearchModel(darts_net(), image_size=16, patch_size=5)
    with pytest.raises(ValueError):
        MAESearchModel(darts_net(), image_size=16, mask_ratio=1.0)


# -- the decoder and the model -----------------------------------------------------------------------
def test_decoder_shapes():
    dec = MultiScaleDecoder((8, 16, 32), decoder_channels=12)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    assert dec(feats, 32).shape == (2, 3, 32, 32)
    assert dec(feats).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError):
        dec(feats[:2])


@pytest.mark.parametrize("make,channels", [(darts_net, (32, 64, 128)), (nb201_net, (8, 16, 32))])
def test_model_infers_stages_without_touching_the_supernet(make, channels):
    net = make()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = MAESearchModel(net, image_size=16)
    assert model.stage_channels == channels
    assert net.training and model.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = images()
    assert model(x).shape == x.shape
    assert model(x, model.draw_mask(x)).shape == x.shape
    keys = model.state_dict().keys()
    assert any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys)
    assert {k[len("encoder."):] for k in keys if k.startswith("encoder.")} == set(before)


def test_loss_is_the_mse_over_masked_pixels_only():
    model = MAESearchModel(darts_net(), image_size=16).eval()
    x = images()
    loss, logits = model.reconstruction_loss(x, generator=torch.Generator().manual_seed(7))
    assert logits is None and loss.dim() == 0
    mask = random_patch_mask(4, 16, 4, 0.5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        recon = model(x, mask)
    expected = ((recon - x) ** 2 * mask).sum() / (mask.sum() * 3)
    torch.testing.assert_close(loss.detach(), expected)
    # the plain MSE over every pixel is a different number (the check above can tell them apart)
    assert not torch.isclose(expected, ((recon - x) ** 2).mean(), rtol=1e-3)
    # the target's visible pixels do not count
    other = x + 5.0 * (~mask)
    torch.testing.assert_close(masked_mse(recon, other, mask), expected)
    assert not torch.isclose(masked_mse(recon, x + 5.0 * mask, mask), expected)


def test_masked_pixels_are_hidden_from_the_encoder():
    model = MAESearchModel(darts_net(), image_size=16).eval()
    x = images()
    mask = random_patch_mask(4, 16, 4, 0.5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x, mask)
        inside = model(x + 3.0 * torch.randn_like(x) * mask, mask)
        outside = model(x + 3.0 * torch.randn_like(x) * ~mask, mask)
    assert torch.equal(ref, inside)
    assert not torch.allclose(ref, outside)


def test_default_mask_uses_the_global_rng():
    model = MAESearchModel(darts_net(), image_size=16).eval()
    x = images()
    with torch.no_grad():
        torch.manual_seed(11)
        a, _ = model.reconstruction_loss(x)
        torch.manual_seed(11)
        b, _ = model.reconstruction_loss(x.clone())   # a new batch object: a new draw, same seed
        c, _ = model.reconstruction_loss(x.clone())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_batch_seen_again_in_a_step_keeps_its_mask():
    """The unrolled step evaluates one batch at w, w+ and w-: one mask for all of them (the last two
    batches are remembered), a new one for a new batch or a batch written in place."""
    model = MAESearchModel(darts_net(), image_size=16).eval()
    x_w, x_a = images(), images().flip(0)
    with torch.no_grad():
        first, _ = model.reconstruction_loss(x_w)
        model.reconstruction_loss(x_a)
        state = torch.get_rng_state()
        again, _ = model.reconstruction_loss(x_w)
        assert torch.equal(torch.get_rng_state(), state)   # no new draw
        assert torch.equal(first, again)
        model.reconstruction_loss(images().flip(1))         # a third batch pushes x_w out
        model.reconstruction_loss(x_a)
        assert not torch.equal(model.reconstruction_loss(x_w)[0], first)
        x_a.mul_(1.0)                                        # written in place: a new mask
        state = torch.get_rng_state()
        model.reconstruction_loss(x_a)
        assert not torch.equal(torch.get_rng_state(), state)


def test_unrolled_arch_gradient_is_a_finite_difference_on_one_mask():
    """With one mask per batch the second-order gradient converges as R shrinks (float64: identical to
    9 digits at R = 1e-5 and 1e-6 / ||v||); with a fresh mask per pass it grew like 1/R (mask noise / R:
    0.30, 30.9, 3091 at 1e-2, 1e-4, 1e-6)."""
    torch.set_default_dtype(torch.float64)
    try:
        norms = []
        for eps in (1e-5, 1e-6):
            torch.manual_seed(0)  # the same supernet and decoder for both R
            model = MAESearchModel(SearchNetwork("nb201", C=4, layers=1, partial_channels=1, edge_norm=False),
                                   image_size=16)
            step = SearchStep(model, unrolled=True, hessian_eps=eps, loss_fn=mae_loss)
            torch.manual_seed(1)
            x_w, x_a = images(), images().flip(0)
            step.a_optimizer.zero_grad()
            step._unrolled_grads(x_w, None, x_a, None)
            norms.append(torch.cat([p.grad.reshape(-1) for p in model.arch_parameters()]).norm().item())
        assert norms[0] > 0 and abs(norms[1] / norms[0] - 1) < 1e-6, norms
    finally:
        torch.set_default_dtype(torch.float32)


# -- the search interface ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [darts_net, nb201_net])
def test_parameters_split_and_arch_gradients(make):
    net = make()
    model = MAESearchModel(net, image_size=16)
    arch, weights = model.arch_parameters(), model.weight_parameters()
    assert [id(p) for p in arch] == [id(p) for p in net.arch_parameters()]
    assert [n for n, _ in model.named_arch_parameters()] == [n for n, _ in net.named_arch_parameters()]
    arch_ids, weight_ids = {id(p) for p in arch}, {id(p) for p in weights}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in model.parameters()}
    assert len(weight_ids) == len(weights)
    decoder_ids = {id(p) for p in model.decoder.parameters()}
    assert decoder_ids and decoder_ids <= weight_ids and not decoder_ids & arch_ids
    assert {id(p) for _, p in model.named_weight_parameters()} == weight_ids
    loss, _ = mae_loss(model, images(), None)
    loss.backward()
    for p in arch:
        assert p.grad is not None and p.grad.abs().sum() > 0
    for p in model.decoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_delegation_to_the_supernet():
    net = darts_net(aux_skip=True)
    model = MAESearchModel(net, image_size=16)
    g = model.genotype()
    assert isinstance(g, Genotype) and g == net.genotype()
    assert model.space == "darts" and model.primitives == net.primitives
    assert model.cell_kinds() == ("normal", "reduce")
    w = model.arch_weights()
    assert set(w) == {"normal", "reduce"} and torch.equal(w["normal"], net.arch_weights()["normal"])
    assert model.arch_regularizer() is None
    assert model.aux_skip is True
    model.aux_skip_weight = 0.25
    assert net.aux_skip_weight == 0.25 and model.aux_skip_weight == 0.25
    assert "aux_skip_weight" not in model.__dict__
    assert model.op_masks() is None
    mask = {k: torch.ones_like(a, dtype=torch.bool) for k, a in model.masked_alphas().items()}
    mask["normal"][:, 0] = False
    model.set_op_mask(mask)
    assert torch.equal(net.op_masks()["normal"], mask["normal"])
    assert torch.equal(model.op_masks()["normal"], mask["normal"])

    nb = nb201_net()
    nb_model = MAESearchModel(nb, image_size=16)
    s = nb_model.genotype()
    assert isinstance(s, str) and s == nb.genotype() and s.count("~") == 6
    assert nb_model.space == "nb201" and nb_model.cell_kinds() == ("cell",)

    drnas = MAESearchModel(darts_net(mixing="dirichlet", reg_type="kl"), image_size=16)
    reg = drnas.arch_regularizer()
    assert reg is not None and torch.isclose(reg, drnas.encoder.arch_regularizer())


class _NoTouch:
    """A label stand-in that fails the test if anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the label was read ({name})")


def test_mae_loss_never_reads_labels():
    model = MAESearchModel(darts_net(), image_size=16)
    loss, logits = mae_loss(model, images(), _NoTouch())
    assert logits is None and torch.isfinite(loss)
    loss, _ = mae_loss(model, images())
    assert torch.isfinite(loss)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(params, before):
    return [not torch.equal(p.detach(), b) for p, b in zip(params, before)]


@pytest.mark.parametrize("make", [darts_net, nb201_net])
@pytest.mark.parametrize("unrolled", [False, True])
def test_search_step_without_labels(make, unrolled):
    model = MAESearchModel(make(), image_size=16)
    step = SearchStep(model, loss_fn=mae_loss, unrolled=unrolled, arch_learning_rate=1e-2)
    arch0, w0 = _snapshot(model.arch_parameters()), _snapshot(model.weight_parameters())
    dec0 = _snapshot(model.decoder.parameters())
    torch.manual_seed(0)
    for i in range(2):
        loss, correct = step(images(seed=10 + i), None, images(seed=20 + i), None)
        assert torch.isfinite(loss) and correct.item() == 0
    assert all(_changed(model.arch_parameters(), arch0))
    assert all(_changed(model.decoder.parameters(), dec0))
    assert sum(_changed(model.weight_parameters(), w0)) > len(dec0)


def test_search_step_reduces_the_reconstruction_loss():
    """A few first-order steps on a fixed batch and fixed masks lower the loss (the objective trains)."""
    model = MAESearchModel(darts_net(), image_size=16)
    step = SearchStep(model, loss_fn=lambda m, x, y: (masked_mse(m(x, mask), x, mask), None),
                      learning_rate=0.05, grad_clip=5.0)
    x = images(b=8)
    mask = random_patch_mask(8, 16, 4, 0.5, generator=torch.Generator().manual_seed(0))
    losses = [step(x, None, x, None)[0].item() for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.gpu
def test_cuda_model_and_masks():
    model = MAESearchModel(darts_net().cuda(), image_size=16)
    assert next(model.decoder.parameters()).is_cuda
    x = images().cuda()
    assert model.draw_mask(x).is_cuda
    step = SearchStep(model, loss_fn=mae_loss)
    loss, _ = step(x, None, x, None)
    assert torch.isfinite(loss)
