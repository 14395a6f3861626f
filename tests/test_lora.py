"""LoRA files merged into our models against diffusers' load_lora_weights + fuse_lora on the same weights.

Random LoRA files cover every Linear and Conv2d layer of the tiny text encoder and UNet (3x3 LoCon convs
included), written in each naming style; the merged models' outputs must match diffusers' fused ones, and
restore() must give back the original weights bit-for-bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import save_file
from test_models_parity import reference_models, rel_err
from torch import nn
from transformers import CLIPTokenizer

import engine
from engine.assets import tokenizer_files
from engine.checkpoint import load_models, read_state_dict
from engine.lora import apply_loras, diffusers_unet_name, read_lora
from engine.testing import write_random_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("lora") / "tiny.safetensors", seed=11)


@pytest.fixture
def ours(ckpt):
    return load_models(ckpt, device="cpu", dtype=torch.float32)


def layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def random_lora(models, style: str, seed: int = 0, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA for every Linear/Conv2d layer; kohya keys in the LDM or diffusers spelling, or PEFT keys."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for component, model in (("text_encoder", models.text_encoder), ("unet", models.unet)):
        for name, m in layers(model).items():
            shape = tuple(m.weight.shape)
            fan_in = math.prod(shape[1:])
            down_shape = (rank, *shape[1:]) if len(shape) == 4 else (rank, shape[1])
            up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
            down = torch.randn(down_shape, generator=g) / math.sqrt(fan_in)
            up = torch.randn(up_shape, generator=g) * 0.2 / math.sqrt(rank)
            alpha = torch.tensor(2.0)  # one for all: diffusers mis-assigns attention layers' own alphas
            if component == "unet":
                spelled = name if style == "kohya_ldm" else diffusers_unet_name(name, models.unet.config)
            else:
                spelled = name
            if style == "comfy":
                key = ("diffusion_model." if component == "unet" else "text_encoders.clip_l.transformer.") + name
                out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
                out[f"{key}.alpha"] = alpha
            elif style == "peft":
                key = f"{'unet' if component == 'unet' else 'text_encoder'}.{spelled}"
                out[f"{key}.lora_A.weight"], out[f"{key}.lora_B.weight"] = down, up
            else:
                key = ("lora_unet_" if component == "unet" else "lora_te_") + spelled.replace(".", "_")
                out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
                out[f"{key}.alpha"] = alpha
    return out


def test_diffusers_names_match_diffusers_converter(ours, ckpt):
    """Our LDM -> diffusers module names agree with diffusers' own checkpoint converter (same tensors)."""
    state = read_state_dict(ckpt)
    cfg = ours.unet.config
    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    config = {"layers_per_block": cfg.num_res_blocks, "block_out_channels": widths,
              "down_block_types": [("CrossAttnDownBlock2D" if a else "DownBlock2D") for a in cfg.attention_levels],
              "up_block_types": [("CrossAttnUpBlock2D" if a else "UpBlock2D")
                                 for a in reversed(cfg.attention_levels)]}
    converted = convert_ldm_unet_checkpoint(state, config)
    for name in layers(ours.unet):
        key = diffusers_unet_name(name, cfg)
        assert key is not None, name
        assert torch.equal(converted[key + ".weight"], state[f"model.diffusion_model.{name}.weight"]), name


@pytest.fixture(scope="module")
def reference_pipe(ckpt):
    def make():
        clip, unet, vae = reference_models(read_state_dict(ckpt))
        vocab, merges = tokenizer_files()
        return StableDiffusionPipeline(
            vae=vae, text_encoder=clip, tokenizer=CLIPTokenizer(str(vocab), str(merges)), unet=unet,
            scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    return make


def outputs(text_encoder, unet, diffusers: bool):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49408, (1, 77), generator=g)
    ids[:, 0], ids[0, 12:] = 49406, 49407
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        if diffusers:
            ctx = text_encoder(ids).last_hidden_state
            return ctx, unet(x, 500, encoder_hidden_states=ctx).sample
        ctx = text_encoder(ids)
        return ctx, unet(x, 500, ctx)


@pytest.mark.parametrize("style", ["kohya_diffusers", "kohya_ldm", "peft"])
def test_merge_matches_diffusers_fuse_lora(style, ours, reference_pipe, tmp_path):
    state = random_lora(ours, style, seed=1)
    path = tmp_path / f"{style}.safetensors"
    save_file(state, str(path))
    before = outputs(ours.text_encoder, ours.unet, diffusers=False)  # also packs the convs
    te_w, unet_w = 0.6, 0.8
    handle = apply_loras(ours, [(path, te_w, unet_w)])
    got = outputs(ours.text_encoder, ours.unet, diffusers=False)

    ref = reference_pipe()
    diffusers_state = random_lora(ours, "kohya_diffusers" if style == "kohya_ldm" else style, seed=1)
    ref.load_lora_weights(diffusers_state)
    ref.fuse_lora(components=["text_encoder"], lora_scale=te_w)
    ref.fuse_lora(components=["unet"], lora_scale=unet_w)
    expected = outputs(ref.text_encoder, ref.unet, diffusers=True)
    for a, b, old in zip(got, expected, before):
        assert rel_err(a, b) <= TOL
        assert rel_err(old, b) > 100 * TOL  # the LoRA made a real difference
    handle.restore()
    after = outputs(ours.text_encoder, ours.unet, diffusers=False)
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_restore_is_exact_after_many_cycles(ours, tmp_path):
    originals = {k: v.clone() for k, v in {**ours.unet.state_dict(), **ours.text_encoder.state_dict()}.items()}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.pt"
    save_file(random_lora(ours, "kohya_diffusers", seed=2), str(a))
    torch.save(random_lora(ours, "peft", seed=3), b)
    for i in range(3):
        outputs(ours.text_encoder, ours.unet, diffusers=False)  # packed convs, fused q/k/v in use
        handle = apply_loras(ours, [(a, 1.0), (b, 0.5, -0.3)] if i % 2 else [(b, 0.7)])
        outputs(ours.text_encoder, ours.unet, diffusers=False)
        handle.restore()
    now = {**ours.unet.state_dict(), **ours.text_encoder.state_dict()}
    assert all(torch.equal(now[k], v) for k, v in originals.items())
    # fused q/k/v still views of one tensor after the cycles
    attn = ours.unet.input_blocks[1][1].transformer_blocks[0].attn1
    assert attn.fused(torch.zeros(1, 2, attn.to_q.weight.shape[1])) is not None


def test_lora_mid_cp_decomposition(ours, tmp_path):
    """LoCon's CP-decomposed conv: the merged 3x3 conv adds w * scale * up(mid(down(x)))."""
    name = "input_blocks.1.0.in_layers.2"
    conv = dict(ours.unet.named_modules())[name]
    out_c, in_c = conv.weight.shape[:2]
    g = torch.Generator().manual_seed(4)
    down, mid, up = torch.randn(3, in_c, 1, 1, generator=g), torch.randn(3, 3, 3, 3, generator=g), \
        torch.randn(out_c, 3, 1, 1, generator=g)
    key = "lora_unet_" + name.replace(".", "_")
    path = tmp_path / "locon.safetensors"
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_mid.weight": mid,
               f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(1.5)}, str(path))
    x = torch.randn(1, in_c, 6, 5, generator=g)
    with torch.no_grad():
        before = conv(x)
        handle = apply_loras(ours, [(path, 0.7)])
        after = conv(x)
        expected = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up) * 0.7 * 1.5 / 3
    assert rel_err(after - before, expected) <= TOL
    handle.restore()


def test_other_layouts_give_the_same_merge(ours, tmp_path):
    """diffusers' `.lora.down.weight` keys and the attention-processor keys map like PEFT's."""
    peft = random_lora(ours, "peft", seed=5)
    legacy = {}
    for k, v in peft.items():
        k = k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
        legacy[k] = v
    processor = {k.replace("attn1.to_q.lora.", "attn1.processor.to_q_lora.")
                 .replace("self_attn.out_proj.lora.", "self_attn.to_out_lora."): v for k, v in legacy.items()}
    assert processor.keys() != legacy.keys()
    merged = []
    for i, state in enumerate((peft, legacy, processor)):
        path = tmp_path / f"{i}.safetensors"
        save_file(state, str(path))
        handle = apply_loras(ours, [(path, 1.0)])
        merged.append({k: v.clone() for k, v in ours.unet.state_dict().items()}
                      | {k: v.clone() for k, v in ours.text_encoder.state_dict().items()})
        handle.restore()
    assert all(torch.equal(merged[0][k], merged[j][k]) for j in (1, 2) for k in merged[0])


class Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_hostile_pickle_is_refused_and_runs_nothing(ours, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:  # a torch-style zip whose data.pkl calls exec
        z.writestr("evil/data.pkl", pickle.dumps({"lora_te_x.lora_down.weight": Boom()}, protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(engine.CheckpointError, match="evil.pt"):
        apply_loras(ours, [(path, 1.0)])
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", ["sdxl", "sd2", "loha_tucker", "nothing"])
def test_foreign_files_are_refused(kind, ours, tmp_path):
    originals = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    if kind == "sdxl":
        state = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
                 "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4)}
        message = "SDXL"
    elif kind == "sd2":
        state = random_lora(ours, "kohya_ldm", seed=6)
        key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
        state[f"{key}.lora_down.weight"] = torch.zeros(4, 1024)
        message = "2.x"
    elif kind == "loha_tucker":
        state = {f"lora_unet_input_blocks_1_1_proj_in.hada_{w}": torch.zeros(4, 4)
                 for w in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")}
        message = "LoHa with CP"
    else:
        state = {"some.weight": torch.zeros(3, 3)}
        message = "not a Stable Diffusion 1.x LoRA"
    path = tmp_path / f"{kind}.safetensors"
    save_file(state, str(path))
    with pytest.raises(engine.CheckpointError, match=message):
        read_lora(path, ours)
    with pytest.raises(engine.CheckpointError, match=message):
        apply_loras(ours, [(path, 1.0)])
    assert all(torch.equal(v, originals[k]) for k, v in ours.unet.state_dict().items())


def test_lcm_lora_layout(ours, tmp_path):
    """LCM-LoRA's file (lcm-lora-sdv1-5 pytorch_lora_weights.safetensors): kohya keys in diffusers spelling
    with `.alpha`, UNet only, every resnet conv (3x3), time_emb_proj, the samplers' convs and attention."""
    state = {k: v for k, v in random_lora(ours, "kohya_diffusers", seed=7, rank=8).items()
             if k.startswith("lora_unet_") and "conv_in" not in k and "conv_out" not in k
             and "time_embedding" not in k}
    for key in ("lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_up_blocks_0_upsamplers_0_conv",
                "lora_unet_mid_block_resnets_1_conv2", "lora_unet_up_blocks_1_resnets_2_conv_shortcut",
                "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"):
        assert f"{key}.lora_down.weight" in state, key
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(state, str(path))
    lora = read_lora(path, ours)
    assert lora.unmatched == [] and {m.component for m in lora.modules} == {"unet"}
    assert len(lora.modules) == len(state) // 3


def test_lora_hashes_as_a1111(tmp_path):
    """addnet hash: sha256 of the tensor data after the header; metadata edits keep it; sshs_model_hash wins."""
    tensors = {"lora_te_a.lora_down.weight": torch.randn(2, 3), "lora_te_a.lora_up.weight": torch.randn(3, 2)}
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file(tensors, str(a), metadata={"ss_output_name": "a"})
    save_file(tensors, str(b), metadata={"ss_output_name": "something much longer", "x": "y"})
    save_file(tensors, str(c), metadata={"sshs_model_hash": "0123456789abcdef" * 4})
    header = json.loads(a.read_bytes()[8 : 8 + int.from_bytes(a.read_bytes()[:8], "little")])
    order = sorted((info["data_offsets"][0], name) for name, info in header.items() if name != "__metadata__")
    data = b"".join(tensors[name].numpy().tobytes() for _, name in order)
    assert engine.addnet_hash(a) == hashlib.sha256(data).hexdigest()
    assert engine.lora_hash(a) == engine.lora_hash(b) == hashlib.sha256(data).hexdigest()[:12]
    assert engine.model_hash(a) != engine.model_hash(b)  # whole-file hashes see the header
    assert engine.lora_hash(c) == "0123456789ab"
    pt = tmp_path / "d.pt"
    torch.save(tensors, pt)
    assert engine.lora_hash(pt) == hashlib.sha256(pt.read_bytes()).hexdigest()[:12]


def test_pipeline_set_loras(ckpt, tmp_path):
    pipe = engine.load_pipeline(ckpt, device="cpu", dtype="fp32")
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    a, bad = tmp_path / "style.safetensors", tmp_path / "bad.safetensors"
    save_file(random_lora(pipe.models, "kohya_ldm", seed=8), str(a))
    save_file({"lora_te1_x.lora_down.weight": torch.zeros(1, 1)}, str(bad))
    with torch.inference_mode():  # as when called from generate()
        pipe.set_loras([(a, 0.5, 1.0)])
    merged = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert not all(torch.equal(merged[k], v) for k, v in original.items())
    weight = pipe.unet.input_blocks[1][1].proj_in.weight
    version = weight._version
    pipe.set_loras([(str(a), 0.5, 1.0)])  # unchanged: nothing is touched
    assert weight._version == version
    assert pipe.lora_hashes == {"style": engine.lora_hash(a)}
    with pytest.raises(engine.CheckpointError, match="SDXL"):
        pipe.set_loras([(bad, 1.0)])
    assert all(torch.equal(v, merged[k]) for k, v in pipe.unet.state_dict().items())  # still merged
    pipe.set_loras([(a, 0.5)])  # unet weight changed: restore + apply
    pipe.set_loras([])
    assert all(torch.equal(v, original[k]) for k, v in pipe.unet.state_dict().items())
    assert pipe.lora_hashes == {}


def test_comfyui_spelling_merges_like_kohya(ours, tmp_path):
    """ComfyUI's LoRA saver: dotted LDM names under diffusion_model. and text_encoders.clip_l.transformer."""
    merged = []
    for style in ("kohya_ldm", "comfy"):
        path = tmp_path / f"{style}.safetensors"
        save_file(random_lora(ours, style, seed=9), str(path))
        lora = read_lora(path, ours)
        assert lora.unmatched == []
        handle = apply_loras(ours, [(path, 0.9)])
        merged.append({**{k: v.clone() for k, v in ours.unet.state_dict().items()},
                       **{k: v.clone() for k, v in ours.text_encoder.state_dict().items()}})
        handle.restore()
    assert all(torch.equal(merged[0][k], merged[1][k]) for k in merged[0])


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_matches_peft(kind, ours, ckpt, tmp_path):
    """LyCORIS LoHa/LoKr: our merged weights equal base + w * PEFT's get_delta_weight on the same factors."""
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    clip, unet, _ = reference_models(read_state_dict(ckpt))
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "to_q", "to_k", "to_v", "to_out.0",
               "proj_in", "proj_out", "ff.net.2", "conv1", "conv2", "time_emb_proj"]
    rank = 4
    if kind == "loha":  # PEFT scales by alpha / r like A1111
        config = LoHaConfig(r=rank, alpha=2.0, target_modules=targets, init_weights=False)
    else:  # alpha = r: PEFT scales even unfactored LoKr by alpha / r, A1111 (and LyCORIS) by 1 there
        config = LoKrConfig(r=rank, alpha=float(rank), target_modules=targets, init_weights=False)
    torch.manual_seed(0)
    names = {v: k for k, v in ((n, diffusers_unet_name(n, ours.unet.config)) for n in layers(ours.unet))}
    state, deltas = {}, {}
    for component, model in (("text_encoder", clip), ("unet", unet)):
        inject_adapter_in_model(config, model)
        for name, module in model.named_modules():
            if not hasattr(module, "lokr_w1" if kind == "lokr" else "hada_w1_a"):
                continue
            ours_name = names[name] if component == "unet" else "text_model." + name.removeprefix("text_model.")
            prefix = ("lora_unet_" if component == "unet" else "lora_te_") + ours_name.replace(".", "_")
            for attr in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b",
                         "lokr_w2", "lokr_w2_a", "lokr_w2_b"):
                holder = getattr(module, attr, None)
                if holder is not None and "default" in holder:
                    holder["default"].data.mul_(0.3)  # PEFT's random init is large for a test
                    state[f"{prefix}.{attr}"] = holder["default"].detach().clone()
            state[f"{prefix}.alpha"] = torch.tensor(config.alpha)
            deltas[(component, ours_name)] = module.get_delta_weight("default").detach()
    assert len(deltas) > 40
    path = tmp_path / f"{kind}.safetensors"
    save_file(state, str(path))
    originals = {(c, n): m.weight.detach().clone() for c in ("text_encoder", "unet")
                 for n, m in layers(getattr(ours, c)).items()}
    handle = apply_loras(ours, [(path, 0.7, 1.3)])
    for (component, name), delta in deltas.items():
        w = 0.7 if component == "text_encoder" else 1.3
        got = dict(layers(getattr(ours, component)))[name].weight
        expected = originals[(component, name)] + w * delta.reshape(got.shape)
        assert rel_err(got - originals[(component, name)], expected - originals[(component, name)]) <= TOL, name
    handle.restore()


def test_bf16_model_merges_in_fp32_and_restores_exactly(ckpt, tmp_path):
    m16 = load_models(ckpt, device="cpu", dtype=torch.bfloat16)
    m32 = load_models(ckpt, device="cpu", dtype=torch.float32)
    path = tmp_path / "style.safetensors"
    save_file({k: v.half() for k, v in random_lora(m32, "kohya_diffusers", seed=10).items()}, str(path))
    originals = {k: v.clone() for k, v in m16.unet.state_dict().items()}
    with torch.no_grad():  # the packed/fused inference layout in use
        ids = torch.full((1, 77), 49407)
        m16.unet(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), 500, m16.text_encoder(ids))
    h16, h32 = apply_loras(m16, [(path, 0.8)]), apply_loras(m32, [(path, 0.8)])
    merged16, merged32 = m16.unet.state_dict(), m32.unet.state_dict()
    changed = [k for k in merged16 if not torch.equal(merged16[k], originals[k])]
    assert len(changed) > 20
    for k in changed:
        assert merged16[k].dtype == torch.bfloat16
        assert rel_err(merged16[k].float(), merged32[k]) <= 1e-2, k  # bf16 rounding of the fp32 result
    h16.restore()
    h32.restore()
    assert all(torch.equal(v, originals[k]) for k, v in m16.unet.state_dict().items())


@pytest.mark.parametrize(("dtype", "budget"), [(torch.float32, 0), (torch.bfloat16, 0), (torch.float32, 200_000)])
def test_originals_past_the_memory_budget_go_to_a_file_and_restore_exactly(ckpt, tmp_path, dtype, budget):
    """A LoRA on every layer (as LCM-LoRA) would double the UNet in RAM: past the budget the originals are
    written to a temporary file and read back by restore(), bit-for-bit (fused q/k/v views, channels_last and
    packed convs in use)."""
    from engine.lora import LoraSet

    models = load_models(ckpt, device="cpu", dtype=dtype)
    path = tmp_path / "all.safetensors"
    save_file(random_lora(models, "kohya_diffusers", seed=12), str(path))
    def state() -> dict[str, torch.Tensor]:
        return {**models.unet.state_dict(), **models.text_encoder.state_dict()}

    originals = {k: v.clone() for k, v in state().items()}
    with torch.no_grad():  # the packed/fused inference layout in use
        ids = torch.full((1, 77), 49407)
        models.unet(torch.randn(1, 4, 8, 8, dtype=dtype), 500, models.text_encoder(ids))
    handle = LoraSet(models, keep_in_memory=budget)
    handle.apply([(read_lora(path, models), 1.0, 1.0)])
    in_memory, in_file = handle.kept_bytes
    assert in_memory <= budget and in_file > 0
    if budget:
        assert in_memory > 0  # the budget is used first
    assert sum(not torch.equal(v, originals[k]) for k, v in state().items()) > 20
    assert handle.loras[0][0].modules == []  # the merged layers' tensors are not kept
    # convs packed before the merge are packed again by it, not at the next generation's first call
    from engine.layers import Conv2d, _packing_available

    packed = [m for m in models.unet.modules() if isinstance(m, Conv2d) and m._pack_shape is not None]
    assert bool(packed) == _packing_available(dtype)
    assert all(m._packed for m in packed)
    handle.restore()
    assert all(m._packed for m in packed)
    assert handle.kept_bytes == (0, 0) and not handle.applied
    assert all(torch.equal(v, originals[k]) for k, v in state().items())
    attn = models.unet.input_blocks[1][1].transformer_blocks[0].attn1
    assert attn.fused(torch.zeros(1, 2, attn.to_q.weight.shape[1], dtype=dtype)) is not None


def test_originals_stay_in_memory_when_no_temporary_file_can_be_made(ours, tmp_path, monkeypatch):
    import engine.lora as lora_module

    def no_file(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lora_module.tempfile, "TemporaryFile", no_file)
    path = tmp_path / "all.safetensors"
    save_file(random_lora(ours, "kohya_ldm", seed=13), str(path))
    originals = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    handle = lora_module.LoraSet(ours, keep_in_memory=0)
    handle.apply([(read_lora(path, ours), 1.0, 1.0)])
    assert handle.kept_bytes[1] == 0 and handle.kept_bytes[0] > 0
    handle.restore()
    assert all(torch.equal(v, originals[k]) for k, v in ours.unet.state_dict().items())
