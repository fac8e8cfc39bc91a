import torch

from vqedge.models import VectorQuantizer


def test_seed_demo_shapes():
    vq = VectorQuantizer(num_embeddings=16, embedding_dim=64)
    quantized, loss, indices = vq(torch.randn(1, 64, 8, 8))
    assert quantized.shape == (1, 64, 8, 8)
    assert loss.dim() == 0
    assert indices.shape == (1, 8, 8) and indices.dtype == torch.int64
    assert vq.get_codebook().shape == (16, 64)


def test_nearest_matches_brute_force():
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 5)
    vq.embedding.weight.data.normal_()
    z = torch.randn(2, 5, 3, 4)
    _, _, idx = vq(z)
    z_NC = z.permute(0, 2, 3, 1).reshape(-1, 5)
    brute = ((z_NC[:, None, :] - vq.get_codebook()[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(idx.flatten(), brute)


def test_straight_through_passes_gradient_to_encoder_output():
    vq = VectorQuantizer(8, 3)
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    quantized, _, _ = vq(z)
    (quantized * 2.0).sum().backward()
    # d(sum 2q)/dz is exactly 2 everywhere under the straight-through estimator.
    assert torch.allclose(z.grad, torch.full_like(z, 2.0))


def test_codebook_loss_trains_codebook_without_ema():
    vq = VectorQuantizer(8, 3)
    _, loss, _ = vq(torch.randn(2, 3, 4, 4))
    loss.backward()
    assert vq.embedding.weight.grad is not None
    assert vq.embedding.weight.grad.abs().sum() > 0


def test_ema_update_equals_hand_computation():
    decay, eps = 0.9, 1e-5
    vq = VectorQuantizer(2, 1, ema=True, decay=decay, eps=eps)
    vq.embedding.weight.data = torch.tensor([[0.0], [10.0]])
    vq.ema_sum.copy_(torch.tensor([[0.0], [10.0]]))
    vq.ema_count.copy_(torch.tensor([1.0, 1.0]))
    vq.train()
    # latents 1, 2 -> code 0; 9 -> code 1
    vq(torch.tensor([1.0, 2.0, 9.0]).view(1, 1, 1, 3))
    count = torch.tensor([0.9 * 1 + 0.1 * 2, 0.9 * 1 + 0.1 * 1])
    s = torch.tensor([0.9 * 0 + 0.1 * 3, 0.9 * 10 + 0.1 * 9])
    n = count.sum()
    smoothed = (count + eps) / (n + 2 * eps) * n
    assert torch.allclose(vq.ema_count, count)
    assert torch.allclose(vq.get_codebook().flatten(), s / smoothed)


def test_ema_codebook_gets_no_gradient():
    vq = VectorQuantizer(4, 2, ema=True)
    assert not vq.embedding.weight.requires_grad


def test_dead_codes_restart_from_batch_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, ema=True, decay=0.5, dead_code_threshold=0.5)
    vq.embedding.weight.data.fill_(100.0)  # far from every latent: all codes but one die
    vq.embedding.weight.data[0] = 0.0
    vq.ema_sum.copy_(vq.embedding.weight.data)
    vq.ema_count.fill_(1.0)
    vq.train()
    z = torch.randn(1, 2, 4, 4)
    for _ in range(10):
        vq(z)
    codebook = vq.get_codebook()
    latents = z.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = (codebook[1:] < 50).all(1)
    assert restarted.all(), "dead codes were not restarted"
    # a restarted code sits at (or, after EMA updates, near) a latent of the batch
    d = torch.cdist(codebook, latents).min(1).values
    assert d.max() < 1.0
    vq.eval()
    _, _, idx = vq(z)
    assert idx.unique().numel() > 1
