"""gen_core.hypernetwork on the tiny model: A1111 files, K/V-only transforms, chaining, hygiene, training."""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from PIL import Image

from gen_core import hypernetwork as H
from gen_core.engine import Engine
from gen_core.types import Cancelled, EngineConfig, GenerationRequest

ACT = {"relu": F.relu, "leakyrelu": F.leaky_relu, "elu": F.elu, "swish": F.hardswish, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
BUCKETS = [(64, 64), (128, 64), (64, 128)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", dtype="fp32"))


def request(**changes) -> GenerationRequest:
    base = GenerationRequest(prompt="a cat", width=64, height=64, steps=4, sampler="DDIM", seed=5)
    return dataclasses.replace(base, **changes)


def pixels(engine: Engine, **changes) -> np.ndarray:
    return np.asarray(engine.generate(request(**changes)).images[0].image)


# -- an A1111 file written the way A1111 lays it out, and the structure computed by hand ---------------------


def a1111_layers(dim: int, layers, activation: str, layer_norm: bool, dropout, g: torch.Generator):
    """(state dict with A1111's Sequential indices, the ops to compute it directly)."""
    state, ops, index = {}, [], 0
    for i in range(len(layers) - 1):
        fan_in, fan_out = int(dim * layers[i]), int(dim * layers[i + 1])
        w, b = torch.randn(fan_out, fan_in, generator=g) * 0.2, torch.randn(fan_out, generator=g) * 0.1
        state[f"linear.{index}.weight"], state[f"linear.{index}.bias"] = w, b
        ops.append(("linear", w, b))
        index += 1
        if activation != "linear" and i < len(layers) - 2:
            ops.append(("act", activation))
            index += 1
        if layer_norm:
            lw, lb = 1 + torch.randn(fan_out, generator=g) * 0.1, torch.randn(fan_out, generator=g) * 0.1
            state[f"linear.{index}.weight"], state[f"linear.{index}.bias"] = lw, lb
            ops.append(("norm", lw, lb))
            index += 1
        if dropout and dropout[i + 1] > 0:
            index += 1  # a Dropout module: no weights, but it takes an index
    return state, ops


def direct(x: torch.Tensor, ops, strength: float) -> torch.Tensor:
    y = x
    for op in ops:
        if op[0] == "linear":
            y = y @ op[1].T + op[2]
        elif op[0] == "act":
            y = ACT[op[1]](y)
        else:
            y = F.layer_norm(y, (y.shape[-1],), op[1], op[2])
    return x + y * strength


def a1111_file(widths, layers=(1, 2, 1), activation="linear", layer_norm=False, dropout=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw, ops = {}, {}
    for w in widths:
        k_state, k_ops = a1111_layers(w, layers, activation, layer_norm, dropout, g)
        v_state, v_ops = a1111_layers(w, layers, activation, layer_norm, dropout, g)
        raw[w] = [k_state, v_state]
        ops[w] = (k_ops, v_ops)
    raw.update(
        name="style", layer_structure=list(layers), activation_func=activation, is_layer_norm=layer_norm,
        use_dropout=bool(dropout), dropout_structure=list(dropout) if dropout else None, step=1234,
        sd_checkpoint_name="sd15", activate_output=False, weight_initialization="Normal",
    )  # fmt: skip
    buf = io.BytesIO()
    torch.save(raw, buf)
    return buf.getvalue(), ops


STRUCTURES = [
    {"layers": (1, 2, 1)},
    {"layers": (1, 1.5, 1), "activation": "relu", "layer_norm": True},
    {"layers": (1, 2, 2, 1), "activation": "swish", "dropout": (0, 0.3, 0.3, 0)},
    {"layers": (1, 0.5, 1), "activation": "tanh", "layer_norm": True},
    {"layers": (1, 2, 1), "activation": "leakyrelu"},
    {"layers": (1, 3, 1), "activation": "elu", "dropout": (0, 0.1, 0)},
    {"layers": (1, 2, 1), "activation": "sigmoid", "layer_norm": True},
]


@pytest.mark.parametrize("options", STRUCTURES)
def test_a1111_pt_transforms_match_a_direct_computation(options):
    data, ops = a1111_file((32, 64), **options)
    hn = H.load_bytes(data, "style.pt")
    assert hn.widths == [32, 64] and hn.structure.activation == options.get("activation", "linear")
    assert hn.meta["step"] == 1234 and hn.meta["base_model"] == "sd15"
    x = torch.randn(2, 7, 32)
    for which in (0, 1):
        got = H.transform([(hn.train(False), 0.7)], x, which)
        torch.testing.assert_close(got, direct(x, ops[32][which], 0.7), rtol=1e-5, atol=1e-6)


def test_old_novelai_keys_load():
    g = torch.Generator().manual_seed(1)
    pair = [{"linear1.weight": torch.randn(64, 32, generator=g), "linear1.bias": torch.randn(64, generator=g),
             "linear2.weight": torch.randn(32, 64, generator=g), "linear2.bias": torch.randn(32, generator=g)} for _ in "kv"]  # fmt: skip
    buf = io.BytesIO()
    torch.save({32: pair}, buf)
    hn = H.load_bytes(buf.getvalue(), "nai.pt")
    x = torch.randn(1, 3, 32)
    k = pair[0]
    expected = x + ((x @ k["linear1.weight"].T + k["linear1.bias"]) @ k["linear2.weight"].T + k["linear2.bias"])
    torch.testing.assert_close(H.transform([(hn, 1.0)], x, 0), expected)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pt(marker) -> bytes:
    """A valid A1111 hypernetwork file that also pickles code creating ``marker`` when unpickled."""
    data, _ = a1111_file((32,))
    raw = torch.load(io.BytesIO(data), weights_only=True)
    raw["payload"] = _Evil(str(marker))
    buf = io.BytesIO()
    torch.save(raw, buf)
    return buf.getvalue()


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(H.HypernetworkError, match="pickled code"):
        H.load_bytes(evil_pt(marker), "evil.pt")
    assert not marker.exists()


def test_validation_errors_are_clear(engine):
    data, _ = a1111_file((1024,))
    with pytest.raises(H.HypernetworkError, match="another base model"):
        H.load_bytes(data, "sd2.pt").check_fits(H.model_widths(engine.unet))
    bad, _ = a1111_file((32,), layers=(1, 2, 1))
    raw = torch.load(io.BytesIO(bad), weights_only=True)
    raw["layer_structure"] = [1, 3, 1]
    buf = io.BytesIO()
    torch.save(raw, buf)
    with pytest.raises(H.HypernetworkError, match="do not match the layer structure"):
        H.load_bytes(buf.getvalue(), "bad.pt")
    with pytest.raises(H.HypernetworkError, match="not a readable"):
        H.load_bytes(b"garbage", "x.safetensors")
    with pytest.raises(H.HypernetworkError, match=r"\.safetensors or an A1111 \.pt"):
        H.load_bytes(b"", "x.ckpt")


def test_safetensors_round_trip_keeps_structure_and_outputs():
    data, _ = a1111_file((32, 64), layers=(1, 1.5, 1), activation="relu", layer_norm=True)
    hn = H.load_bytes(data, "style.pt")
    again = H.load_bytes(hn.to_bytes(), "style.safetensors")
    assert again.structure == hn.structure and again.name == "style" and again.meta["step"] == 1234
    x = torch.randn(1, 5, 64)
    assert torch.equal(H.transform([(again, 0.6)], x, 1), H.transform([(hn, 0.6)], x, 1))


def test_zero_last_layer_is_identity_and_strength_zero_is_identity():
    fresh = H.Hypernetwork.new("new", [32, 64], H.Structure(activation="relu", layer_norm=True))
    x = torch.randn(2, 4, 32)
    assert torch.equal(H.transform([(fresh, 1.0)], x, 0), x)
    data, _ = a1111_file((32,), activation="relu")
    assert torch.equal(H.transform([(H.load_bytes(data, "a.pt"), 0.0)], x, 1), x)


# -- on the UNet -----------------------------------------------------------------------------------------


def _attention(engine: Engine, cross: bool) -> Attention:
    return next(m for n, m in engine.unet.named_modules() if isinstance(m, Attention) and n.endswith("attn2" if cross else "attn1"))


def _manual_attention(attn: Attention, x: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    heads = attn.heads

    def split(t):
        return t.view(t.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(k_in)), split(attn.to_v(v_in))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape[0], -1, heads * q.shape[-1])
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("cross", [True, False])
def test_processor_transforms_k_and_v_only_chained(engine, cross):
    attn = _attention(engine, cross)
    dim = attn.to_q.in_features
    ctx_dim = attn.to_k.in_features
    first, _ = a1111_file((32, 64), activation="relu", seed=1)
    second, _ = a1111_file((32, 64), layers=(1, 1, 1), layer_norm=True, seed=2)
    chain = [(H.load_bytes(first, "a.pt").train(False), 0.8), (H.load_bytes(second, "b.pt").train(False), 0.5)]
    x = torch.randn(1, 16, dim)
    ctx = torch.randn(1, 77, ctx_dim) if cross else x
    with torch.no_grad():
        with H.applied(engine, chain):
            got = attn(x, encoder_hidden_states=ctx if cross else None)
        k_in = H.transform(chain[1:], H.transform(chain[:1], ctx, 0), 0)
        v_in = H.transform(chain[1:], H.transform(chain[:1], ctx, 1), 1)
        expected = _manual_attention(attn, x, k_in, v_in)
        plain = attn(x, encoder_hidden_states=ctx if cross else None)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)  # the modules do change K/V


def test_no_trace_between_jobs_and_strength_zero_is_the_base_model(engine, tiny_model_dir):
    before = engine.unet.attn_processors
    params = {n: p.detach().clone() for n, p in engine.unet.named_parameters()}
    data, _ = a1111_file((32, 64), activation="relu")
    hn = H.load_bytes(data, "style.pt").train(False)
    base = pixels(engine)
    with H.applied(engine, [(hn, 0.0)]):
        assert np.array_equal(pixels(engine), base)
    with H.applied(engine, [(hn, 1.0)]):
        styled = pixels(engine)
    assert np.abs(styled.astype(int) - base).mean() > 0.5
    after = engine.unet.attn_processors
    assert all(after[k] is before[k] for k in before) and len(after) == len(before)
    assert all(torch.equal(p, params[n]) for n, p in engine.unet.named_parameters())
    fresh = Engine.load(EngineConfig(model_path=str(tiny_model_dir), device="cpu", dtype="fp32"))
    assert np.array_equal(pixels(engine), pixels(fresh))
    with pytest.raises(RuntimeError), H.applied(engine, [(hn, 1.0)]):
        raise RuntimeError("a job failed mid-way")
    assert all(engine.unet.attn_processors[k] is before[k] for k in before)


def test_module_cache_reloads_changed_files(engine, tmp_path):
    path = tmp_path / "m.safetensors"
    H.Hypernetwork.new("m", [32]).save(path)
    cache = H.ModuleCache(size=1)
    first = cache.get(path, engine.device)
    assert cache.get(path, engine.device) is first
    with pytest.raises(H.HypernetworkError, match="missing"):
        cache.get(tmp_path / "gone.safetensors", engine.device)


# -- training ------------------------------------------------------------------------------------------------


def training_set():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (160, 80), (80, 150), (64, 64)]
    images = [Image.fromarray(np.kron(rng.integers(0, 255, (h // 16, w // 16, 3)), np.ones((16, 16, 1))).astype(np.uint8)) for w, h in sizes]
    return images, ["a red cat", "blue dog, sky", "green tree", "a red cat, smiling"]


def test_training_lowers_the_loss_over_buckets_and_the_file_reloads(engine, tmp_path):
    images, captions = training_set()
    steps = []
    config = H.TrainConfig(steps=60, lr=0.03, batch_size=2, shallow_penalty=0.0, structure=H.Structure(activation="relu"))
    before = H.evaluate(engine, [], images, captions, BUCKETS)
    flags = {n: p.requires_grad for n, p in engine.unet.named_parameters()}
    result = H.train(engine, "trained", images, captions, BUCKETS, config, progress=steps.append)
    after = H.evaluate(engine, [(result.hypernetwork, 1.0)], images, captions, BUCKETS)
    assert after < before - 0.01
    assert result.buckets == {"64x64": 2, "128x64": 1, "64x128": 1}
    assert [p.step for p in steps] == list(range(1, 61)) and steps[-1].stage == H.STAGE_TRAIN
    assert {n: p.requires_grad for n, p in engine.unet.named_parameters()} == flags  # the base model as found
    path = tmp_path / "trained.safetensors"
    result.hypernetwork.save(path)
    again = H.load_file(path)
    assert again.meta["training"]["images"] == 4 and again.meta["base_model"] == engine.model_name
    with H.applied(engine, [(result.hypernetwork, 0.9)]):
        one = pixels(engine)
    with H.applied(engine, [(again.to(engine.device), 0.9)]):
        assert np.array_equal(pixels(engine), one)


def _shallow_change(engine, hn) -> float:
    """The depth-weighted squared context change of one UNet pass at 64×64 (what the penalty measures)."""
    penalty = H._Penalty(8 * 8)
    with torch.no_grad(), H.applied(engine, [(hn, 1.0)], penalty):
        engine.unet(torch.randn(1, 4, 8, 8), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, 32))
    return float(penalty.total)


def test_the_shallow_penalty_restrains_the_context_change(engine):
    images, captions = training_set()
    free, held = (
        H.train(engine, "p", images, captions, BUCKETS, H.TrainConfig(steps=30, lr=0.03, shallow_penalty=weight)).hypernetwork
        for weight in (0.0, 1.0)
    )
    assert _shallow_change(engine, held) < 0.5 * _shallow_change(engine, free)


def test_training_can_be_cancelled_and_leaves_the_engine_clean(engine):
    images, captions = training_set()
    before = engine.unet.attn_processors
    stop = threading.Event()

    def progress(p):
        if p.step == 3:
            stop.set()

    with pytest.raises(Cancelled):
        H.train(engine, "x", images[:2], captions[:2], BUCKETS, H.TrainConfig(steps=50), progress=progress, cancel=stop)
    assert all(engine.unet.attn_processors[k] is before[k] for k in before)


def test_modules_compose_with_peft_adapters_and_leave_them_alone(engine):
    """Imagic puts LoRA adapters on the same projections: the K/V view calls whatever to_k/to_v is there."""
    from peft import LoraConfig

    data, _ = a1111_file((32, 64), activation="relu")
    hn = H.load_bytes(data, "style.pt").train(False)
    base = pixels(engine)
    with H.applied(engine, [(hn, 1.0)]):
        styled = pixels(engine)
    engine.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_v", "to_q", "to_out.0"]), adapter_name="t")
    try:
        with H.applied(engine, [(hn, 1.0)]):
            assert np.array_equal(pixels(engine), styled)  # zero-initialised adapters: the same projections
        assert any("lora_" in n for n, _ in engine.unet.named_parameters())
    finally:
        engine.unet.unload_lora()
    assert np.array_equal(pixels(engine), base)
