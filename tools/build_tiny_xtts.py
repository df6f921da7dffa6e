"""Build a tiny random-weight XTTS-v2 checkpoint folder for tests and benchmarks.

No XTTS weights can be downloaded here, so tests build a real checkpoint in about a second (plus
the imports): a 2-layer GPT and a BPE vocab trained with `tokenizers`; the HiFiGAN decoder and
speaker encoder keep their fixed sizes, so model.pth is ~88 MiB. Never commit one.

    .venv/bin/python tools/build_tiny_xtts.py OUT_DIR [--seed S]

    from tools.build_tiny_xtts import build
    ckpt_dir = build("var/models/tiny-xtts", seed=0)

The folder has the same layout as the official XTTS-v2 download
(config.json, model.pth, vocab.json, speakers_xtts.pth) and loads through
Coqui's own path:

    config = XttsConfig(); config.load_json(dir / "config.json")
    model = Xtts.init_from_config(config)
    model.load_checkpoint(config, checkpoint_dir=dir, use_deepspeed=False)

With never_stop=True (default) the stop-audio-token logit is biased to -1e4, so
every generation runs to the GPT cap: gpt_max_audio_tokens - 3 codes (61 for 64) ->
61*1024 samples @22.05 kHz -> 67840 samples @24 kHz (2.827 s), every time.
(Plain random weights stop early in ~10% of generations.) Output is 24 kHz.
Deterministic: the same seed gives byte-identical files. A different seed
gives different weights and speakers (same vocab), for model-swap tests.

Run as a script:  python build_tiny_xtts.py OUT_DIR [SEED]
"""

from __future__ import annotations

import json
from pathlib import Path

# XTTS-v2 language list, in the order of the official config.json.
LANGUAGES = [
    "en",
    "es",
    "fr",
    "de",
    "it",
    "pt",
    "pl",
    "tr",
    "ru",
    "nl",
    "cs",
    "ar",
    "zh-cn",
    "hu",
    "ko",
    "ja",
    "hi",
]
SPEAKERS = ["Tiny Alice", "Tiny Bob"]  # built-in speakers stored in speakers_xtts.pth

# Small multilingual corpus: BPE merges come from it; the initial alphabet
# makes sure every lowercase latin letter, digit and common punctuation has a token.
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny test model for text to speech",
    "she sells sea shells by the sea shore and the shells she sells are surely sea shells",
    "how much wood would a woodchuck chuck if a woodchuck could chuck wood",
    "one two three four five six seven eight nine ten hundred thousand",
    "the rain in spain stays mainly in the plain",
    "el veloz murciélago hindú comía feliz cardillo y kiwi",
    "portez ce vieux whisky au juge blond qui fume",
    "zwölf boxkämpfer jagen viktor quer über den großen sylter deich",
    "pchnąć w tę łódź jeża lub ośm skrzyń fig",
    "příliš žluťoučký kůň úpěl ďábelské ódy",
]
_ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()")


def _train_vocab(path: Path, vocab_size: int = 200) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    # [STOP]=0 [UNK]=1 [SPACE]=2 like the official vocab; then [START] and language tokens.
    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [f"[{lang}]" for lang in LANGUAGES]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = _CORPUS * 4  # the vocab does not depend on the seed
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=_ALPHABET,
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.save(str(path))


def build(
    out_dir, seed: int = 0, *, gpt_max_audio_tokens: int = 64, never_stop: bool = True
) -> Path:
    """Create the checkpoint folder `out_dir` and return it as a Path."""
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    vocab_path = out / "vocab.json"
    _train_vocab(vocab_path)

    args = XttsArgs(
        gpt_layers=2,
        gpt_n_model_channels=64,
        gpt_n_heads=4,
        gpt_max_audio_tokens=gpt_max_audio_tokens,
        gpt_max_text_tokens=402,
        gpt_max_prompt_tokens=70,
        # XTTS-v2 values (official config.json)
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_use_masking_gt_prompt_approach=True,
        gpt_use_perceiver_resampler=True,
        decoder_input_dim=64,  # must equal gpt_n_model_channels (HiFiGAN input = GPT latents)
        d_vector_dim=512,
        kv_cache=True,
    )
    config = XttsConfig(
        model_args=args,
        audio=XttsAudioConfig(sample_rate=22050, output_sample_rate=24000),
        languages=list(LANGUAGES),
        temperature=0.75,
        length_penalty=1.0,
        repetition_penalty=5.0,
        top_k=50,
        top_p=0.85,
        gpt_cond_len=30,
        gpt_cond_chunk_len=4,
        max_ref_len=30,
    )

    torch.manual_seed(seed)
    # Constructing Xtts(config) runs init_models() with no tokenizer; build it
    # properly the way load_checkpoint does: tokenizer first, then init_models().
    model = Xtts(config)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=vocab_path)
    torch.manual_seed(seed)
    model.init_models()  # fills gpt_number_text_tokens / start / stop from the vocab
    if never_stop:
        # Random weights DO emit the stop token now and then (~10% of generations
        # ended early, some after 5 tokens). Make its logit hugely negative so
        # every generation runs to the cap: deterministic audio length.
        with torch.no_grad():
            model.gpt.mel_head.bias[args.gpt_stop_audio_token] = -1.0e4
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state}, out / "model.pth")

    # Keep config.json consistent with the vocab (as in the official file).
    config.model_args.gpt_number_text_tokens = model.args.gpt_number_text_tokens
    config.model_args.gpt_start_text_token = model.args.gpt_start_text_token
    config.model_args.gpt_stop_text_token = model.args.gpt_stop_text_token
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=4, sort_keys=False) + "\n")

    # speakers_xtts.pth: {name: {"gpt_cond_latent": [1,32,C], "speaker_embedding": [1,512,1]}}
    # (key order matters: Xtts.synthesize() unpacks .values()).
    g = torch.Generator().manual_seed(seed + 1)
    speakers = {}
    for name in SPEAKERS:
        emb = torch.randn(1, args.d_vector_dim, 1, generator=g)
        emb = emb / emb.norm(dim=1, keepdim=True)  # speaker encoder output is l2-normalised
        speakers[name] = {
            "gpt_cond_latent": torch.randn(1, 32, args.gpt_n_model_channels, generator=g),
            "speaker_embedding": emb,
        }
    torch.save(speakers, out / "speakers_xtts.pth")
    del model
    return out


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Build a tiny random-weight XTTS checkpoint.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when OUT_DIR/model.pth exists"
    )
    args = parser.parse_args()
    if args.if_missing and (args.out_dir / "model.pth").exists():
        return
    started = time.perf_counter()
    print(f"building a tiny XTTS checkpoint in {args.out_dir} ...", flush=True)
    path = build(args.out_dir, seed=args.seed)
    print(f"built {path} in {time.perf_counter() - started:.1f} s")
    for f in sorted(path.iterdir()):
        print(f"  {f.name:20s} {f.stat().st_size / 2**20:8.2f} MiB")


if __name__ == "__main__":
    main()
