"""The bridge: shapes, config round trip, variance alignment, the closed form, loading from a run folder."""
from __future__ import annotations

import pytest
import torch

from zeroshift.errors import CacheMismatch, ZeroshiftError
from zeroshift.models.bridge import VARIANCE, Bridge, Moments, ResidualMLP
from zeroshift.runs import load_bridge as vlm_from_artefact


def _moments(*sides: torch.Tensor, scatter: bool = True, chunk: int = 64) -> Moments:
    m = Moments(scatter)
    for s in range(0, len(sides[0]), chunk):
        m.update(*(x[s:s + chunk] for x in sides))
    return m


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_forward_inverse_shapes_and_config_round_trip(kind):
    torch.manual_seed(0)
    bridge = Bridge(12, 7, kind=kind, hidden=16)
    z, t = torch.randn(5, 12), torch.randn(3, 7)
    assert bridge(z).shape == (5, 7) and bridge.inverse(t).shape == (3, 12)
    copy = Bridge.from_config(bridge.config())
    assert copy.config() == bridge.config()
    copy.load_state_dict(bridge.state_dict())
    torch.testing.assert_close(copy(z), bridge(z))
    assert {"source_mean", "source_scale", "teacher_mean", "teacher_scale"} <= set(bridge.state_dict())


def test_bad_config_is_one_line_error():
    with pytest.raises(ZeroshiftError, match="unknown bridge kind 'conv'"):
        Bridge(4, 4, kind="conv")
    with pytest.raises(ZeroshiftError, match="lacks or mistypes"):
        Bridge.from_config({"kind": "linear", "source_dim": 4})


def test_mlp_starts_as_its_affine_part():
    torch.manual_seed(0)
    mlp, x = ResidualMLP(6, 5, 8), torch.randn(4, 6)
    torch.testing.assert_close(mlp(x), mlp.linear(x))


def test_variance_alignment_centred_and_text_to_concept_style():
    torch.manual_seed(0)
    x = torch.randn(400, 10) * torch.linspace(0.5, 3.0, 10) + 7.0  # large offset: the shifted sums must cope
    y = torch.randn(400, 6) * 0.1 - 2.0
    m = _moments(x, y)
    bridge = Bridge(10, 6)
    bridge.set_alignment(m, m, 0, 1)
    u = bridge.to_source(x)
    assert u.mean(0).abs().max() < 1e-3
    assert abs(u.var(0, unbiased=False).mean().item() - VARIANCE) < 1e-3
    assert abs(bridge.to_teacher(y).var(0, unbiased=False).mean().item() - VARIANCE) < 1e-3
    ttc = Bridge(10, 6, center=False)  # Text-to-Concept: one scalar, variance of all entries together
    ttc.set_alignment(m, m, 0, 1)
    assert abs(ttc.to_source(x).var(unbiased=False).item() - VARIANCE) < 1e-3
    assert torch.equal(ttc.source_mean, torch.zeros(10))


def test_constant_features_cannot_be_aligned():
    bridge, x = Bridge(3, 2), torch.ones(10, 3)
    m = _moments(x, torch.randn(10, 2))
    with pytest.raises(ZeroshiftError, match="do not vary"):
        bridge.set_alignment(m, m, 0, 1)


def test_closed_form_recovers_a_known_affine_map_both_ways():
    torch.manual_seed(0)
    a, c = torch.randn(8, 5), torch.randn(8) * 3  # y = a x + c, injective: x is recoverable from y
    x = torch.randn(300, 5) * 2 + 1
    y = x @ a.T + c  # [300, 8]
    m = _moments(x, y)
    bridge = Bridge(5, 8)
    bridge.set_alignment(m, m, 0, 1)
    bridge.fit_ridge(m, ridge=0.0)
    with torch.no_grad():
        torch.testing.assert_close(bridge(x), y, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(bridge.inverse(y), x, atol=1e-3, rtol=1e-4)
    bridge.fit_ridge(m, ridge=100.0)  # a penalty as heavy as 100 images shrinks the map
    with torch.no_grad():
        assert (bridge(x) - y).abs().max() > 1e-2


def _run(tmp_path, teacher="tiny-clip:seed=0", encoder="tiny-clip:seed=1,dim=24", source_dim=24, teacher_dim=32):
    bridge = Bridge(source_dim, teacher_dim)
    config = {"kind": "bridge", "teacher": teacher, "encoder": encoder, "bridge": bridge.config(),
              "spec": "run:test@0"}
    state = {f"bridge.{k}": v for k, v in bridge.state_dict().items()}
    return bridge, config, state


def test_vlm_from_artefact_builds_encoder_bridge_and_teacher_text(tmp_path):
    bridge, config, state = _run(tmp_path)
    with torch.no_grad():
        bridge.h.weight.normal_()
    state = {f"bridge.{k}": v for k, v in bridge.state_dict().items()}
    vlm = vlm_from_artefact(tmp_path, config, state, runtime="torch")
    assert vlm.spec == "run:test@0" and vlm.dim == 32
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = bridge(vlm.image.encode_image(images))
    torch.testing.assert_close(vlm.encode_image(images), expected)
    assert vlm.encode_text(["a cat", "a dog"]).shape == (2, 32)


def test_vlm_from_artefact_refuses_mismatched_weights_and_dims(tmp_path):
    _, config, state = _run(tmp_path)
    bad = dict(state, **{"bridge.h.weight": torch.zeros(32, 23)})
    with pytest.raises(CacheMismatch, match="does not match its bridge config"):
        vlm_from_artefact(tmp_path, config, bad, runtime="torch")
    _, config, state = _run(tmp_path, encoder="tiny-clip:seed=1,dim=16")  # encoder now gives 16-d, bridge wants 24
    with pytest.raises(CacheMismatch, match="expects a 24-d encoder"):
        vlm_from_artefact(tmp_path, config, state, runtime="torch")
